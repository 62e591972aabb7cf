"""What a run writes and reads: checkpoints and metric sinks."""
