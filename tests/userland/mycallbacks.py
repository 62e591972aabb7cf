"""A user's callback: ``+callbacks.mine._target_=mycallbacks.StopAfter +callbacks.mine.updates=3``
(protocol: ppo_lab/training/callbacks.py)."""

import json

from ppo_lab.training.callbacks import Callback


class StopAfter(Callback):
    """Ask training to stop after ``updates`` updates; record every hook called, with its
    global_step, in ``<run dir>/<filename>`` (a JSON list, rewritten at each hook)."""

    def __init__(self, updates: int = 3, filename: str = "hooks.json"):
        self.updates, self.filename = int(updates), filename
        self.calls = []

    def _record(self, run, hook):
        self.calls.append({"hook": hook, "global_step": run.global_step, "iteration": run.iteration})
        (run.run_dir / self.filename).write_text(json.dumps(self.calls))

    def on_training_start(self, run):
        self._record(run, "on_training_start")

    def on_update_end(self, run, metrics):
        self._record(run, "on_update_end")
        return run.iteration >= self.updates

    def on_eval_end(self, run, metrics):
        self._record(run, "on_eval_end")

    def on_training_end(self, run, result):
        self._record(run, "on_training_end")
