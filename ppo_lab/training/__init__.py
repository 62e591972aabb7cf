"""The training loop and what it drives: rollout buffer and collector, evaluation, callbacks,
diagnostics, the process runtime (device, threads, seeds)."""
