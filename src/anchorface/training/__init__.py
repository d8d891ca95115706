"""The method-agnostic training loop (`loop.py`: Accelerate, exact resume, EMA, checkpoints, logs, previews) and
what a method gives it (`recipe.py`: model, parameter groups, examples, loss, preview, export)."""
