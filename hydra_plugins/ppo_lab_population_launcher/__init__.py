"""``hydra/launcher=population``: a Hydra launcher that trains a sweep's jobs as populations.

Hydra finds this package in the ``hydra_plugins`` namespace (no ``__init__.py`` at
``hydra_plugins/``) and imports every module in it on start-up, so nothing here imports torch
or ppo_lab at module level: the launcher imports ``ppo_lab.commands.population`` in ``launch``.
"""
