"""``python -m ppo_lab.report <sweep dir>``: the entry point of the sweep report (``commands/report.py``)."""

import sys

from ppo_lab.commands.report import main

if __name__ == "__main__":
    sys.exit(main())
