"""The training loop (Accelerate: one or many GPUs, resume, EMA, checkpoints, logs, previews)."""
