"""The config of ``hydra/launcher=population`` (``hydra.launcher.<field>`` on the command line)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class PopulationLauncherConf:
    """Fields of ``hydra/launcher=population``.

    Jobs whose configs differ only in batchable keys (``seed``, ``agent.learning_rate``,
    ``agent.clip_coef``, ... see ``ppo_lab.commands.sweep.BATCHABLE_KEYS``) form one
    population; each population is trained by ``ppo_lab.commands.population.train_population``.
    """

    _target_: str = "hydra_plugins.ppo_lab_population_launcher.population_launcher.PopulationLauncher"
    #: Most members of one population (jobs); a larger group is split, in job order.
    max_members: int = 16
    #: Populations trained at once, each in its own worker process (1: in the sweep's process).
    #: 2 cores: 2. Each population also runs agent.num_envs envs and torch_threads threads.
    n_jobs: int = 1


ConfigStore.instance().store(
    group="hydra/launcher", name="population", node=PopulationLauncherConf, provider="ppo_lab"
)
