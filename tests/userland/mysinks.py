"""A user's metric sink: ``+logger.csv._target_=mysinks.CsvSink`` (protocol: ppo_lab/io/sinks.py)."""

import csv


class CsvSink:
    """Long-format CSV ``global_step,key,value`` in ``<run dir>/<filename>``; scalars only."""

    def __init__(self, context, filename: str = "metrics.csv"):
        self.file = open(context.run_dir / filename, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["global_step", "key", "value"])

    def log(self, metrics, step):
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.writerow([step, key, value])
        self.file.flush()

    def summary(self, values):
        pass

    def finish(self, exit_code):
        self.file.close()
