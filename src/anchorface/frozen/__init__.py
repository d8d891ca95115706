"""Frozen pretrained parts loaded from a local folder or a hub id: latent codecs (SD VAE, the weight-free pixel
codec) and CLIP (`encoders.py`)."""
