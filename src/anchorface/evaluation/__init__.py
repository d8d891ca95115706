"""Metrics (`metrics.py`) and the evaluation protocols of §4.3 (`protocols.py`)."""
