"""Train PPO: ``python train.py [overrides]`` (see README). Thin Hydra entry point."""

from __future__ import annotations

from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ppo_lab.commands.cli import EXIT_INTERRUPTED, main_guard, result_line
from ppo_lab.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    # Imported here, not at the top: the launcher process of a population sweep never trains,
    # and skipping torch's import lets it set up the jobs while its workers start.
    from ppo_lab.commands.train import train

    hc = HydraConfig.get()
    sweep_dir = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None
    try:
        result = main_guard(train, cfg, hc.runtime.output_dir, list(hc.overrides.task), sweep_dir)
    except SystemExit as exc:
        if sweep_dir is None:
            raise
        if exc.code == EXIT_INTERRUPTED:
            # SIGTERM/Ctrl-C stops the whole sweep (Hydra lets KeyboardInterrupt through), it
            # does not skip to the next job.
            raise KeyboardInterrupt from None
        # In a multirun, an exception (not an exit) marks only this job failed: Hydra runs the
        # other jobs, then reports "Error executing job with overrides: [...]" and exits 1.
        raise RuntimeError(
            f"job {hc.job.num} failed (exit status {exc.code}); run dir: {hc.runtime.output_dir}"
        ) from None
    print(result_line(result, hc.runtime.output_dir))
    # The return value is the objective for sweepers (e.g. Optuna): final mean eval return.
    return result["eval/episodic_return"]


if __name__ == "__main__":
    import gc
    import sys

    from ppo_lab.commands.cli import check_run_dir_args, resume_run_dir_args
    from ppo_lab.config import TrainConfig, check_override_keys, rewrite_alias_args

    # Aliases become their standard keys before Hydra composes, so --cfg job, .hydra/ and W&B
    # show the value the run uses (agent.clip=0.1 -> agent.clip_coef=0.1).
    sys.argv[1:] = rewrite_alias_args(sys.argv[1:])
    main_guard(check_override_keys, sys.argv[1:], TrainConfig)
    main_guard(check_run_dir_args, sys.argv[1:])
    sys.argv[1:] += resume_run_dir_args(sys.argv[1:])
    main()
    # Everything is written and closed by now. Freezing the heap spares the interpreter's exit a
    # final garbage collection over the ~200k objects torch and Hydra leave behind (~0.3 s of
    # every run's wall); atexit handlers and stream flushes still run.
    gc.freeze()
