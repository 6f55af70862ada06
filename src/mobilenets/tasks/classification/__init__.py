"""Image classification: training recipes, evaluation and prediction of a checkpoint."""
