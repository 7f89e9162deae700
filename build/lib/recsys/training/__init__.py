"""Training: one train/eval loop (in-process or per Ray worker), checkpoints, MLflow tracking."""
