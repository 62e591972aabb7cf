"""Evaluate a saved run: ``python evaluate.py checkpoint=<run dir or .pt>`` (see README)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from ppo_lab.config import EvaluateConfig, register_configs
from ppo_lab.commands.evaluate import evaluate_checkpoint, format_results
from ppo_lab.commands.cli import main_guard

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    typed: EvaluateConfig = OmegaConf.to_object(cfg)
    summary = main_guard(evaluate_checkpoint, typed)
    print(format_results(summary))
    return summary["mean_return"]


if __name__ == "__main__":
    main()
