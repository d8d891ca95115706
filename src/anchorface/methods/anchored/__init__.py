"""Anchored Diffusion (the paper): the sDiT (`sdit.py`), sequence plans (`plans.py`), Algorithm 1
(`sampler.py`), the learned global encoder, checkpoints, the reenactment pipeline (`pipeline.py`) and the training
recipe (`training.py`)."""
