"""DiffusionAct (paper 003): face reenactment by steering a diffusion autoencoder's semantic code (§3)."""
