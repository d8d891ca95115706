"""Gaussian diffusion (`gaussian.py`: schedule, hybrid loss) and sampling with diffusers' schedulers
(`sampling.py`: respacing, frame-wise steps, guidance)."""
