"""The one training engine: settings, the epoch loop, evaluation, checkpoints, the run."""
