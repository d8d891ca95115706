"""What users run: the `anchorface` command (`cli.py`) and one module per sub-command."""
