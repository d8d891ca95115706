"""The reenactment encoder E_r of DiffusionAct (paper 003, §3.2, Fig. 2).

E_r is the DiffAE's semantic encoder E, initialised with E's weights, whose input is the source image plus a
"zero" 1x1 convolution (ControlNet) of the target's landmark image y_t: E_r(x, y) = E'(x + ZeroConv(y)). At
initialisation the convolution's weights and bias are 0, so E_r(x, y) == E(x) exactly; training moves both.

The landmark image (`faces.landmarks.landmark_image`) draws MediaPipe's 478 points (irises included) where the
paper draws EMOCA landmarks built from the source's shape and the target's pose and expression plus a gaze point
(supp. B); the project's relative-motion retargeting (`faces.landmarks.relative_motion`) gives that split.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from anchorface.methods.diffusionact.diffae import SemanticEncoder, _Persist


class ReenactmentEncoder(_Persist, nn.Module):
    """E_r(x [B, 3, R, R], y [B, C_l, R, R]) -> z_r [B, z_dim]."""

    KIND = "reenactment_encoder"

    def __init__(self, z_dim: int = 512, channels: int = 64, resolution: int = 64, in_channels: int = 3,
                 landmark_channels: int = 3):
        super().__init__()
        self.encoder = SemanticEncoder(z_dim, channels, resolution, in_channels)
        self.zero_conv = nn.Conv2d(landmark_channels, in_channels, 1)
        nn.init.zeros_(self.zero_conv.weight)
        nn.init.zeros_(self.zero_conv.bias)
        self.config: dict[str, Any] = {**self.encoder.config, "landmark_channels": landmark_channels}

    @classmethod
    def from_encoder(cls, encoder: SemanticEncoder, landmark_channels: int = 3) -> "ReenactmentEncoder":
        """E_r initialised from E (§3.3): a copy of E's weights and a zero 1x1 convolution."""
        er = cls(**encoder.config, landmark_channels=landmark_channels)
        er.encoder.load_state_dict(copy.deepcopy(encoder.state_dict()))
        return er.to(next(encoder.parameters()).device)

    def forward(self, x: torch.Tensor, landmark_image: torch.Tensor) -> torch.Tensor:
        return self.encoder(x + self.zero_conv(landmark_image))
