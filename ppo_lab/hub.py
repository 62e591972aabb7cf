"""``python -m ppo_lab.hub package|push``: the entry point of Hub packages (``api/hub.py``)."""

import sys

from ppo_lab.api.hub import main

if __name__ == "__main__":
    sys.exit(main())
