"""PPO's arithmetic as pure functions on arrays and tensors: GAE, losses, schedules, the optimizer."""
