"""``python -m ppo_lab.export <run dir> format=onnx|torchscript``: the entry point of policy export (``api/export.py``)."""

import sys

from ppo_lab.api.export import main

if __name__ == "__main__":
    sys.exit(main())
