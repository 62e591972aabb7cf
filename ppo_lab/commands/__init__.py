"""What ``train.py``, ``evaluate.py`` and ``python -m ppo_lab.<x>`` run: wiring only."""
