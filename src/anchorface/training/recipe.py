"""What a method gives the training loop: a *recipe* (`Recipe`), found from `Config.method` (`recipe_class`).

Recipes are duck-typed: a method's recipe does not import this module (imports point downward, and training sits
above the methods). The loop owns everything else: devices, the optimiser and schedule, EMA, exact resume,
checkpoints, logs and previews on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from anchorface.config import Config
from anchorface.errors import AnchorfaceError


class Recipe(Protocol):
    """A method's model, data and loss for `anchorface.training.loop.train`.

    Constructed as `Recipe(cfg, data_dir, holdout_videos=...)` once per process, before the model is built.
    """

    log_terms: tuple[str, ...]  # entries of `loss()` logged besides "loss" (CSV columns, TensorBoard loss/<term>)
    dataset: torch.utils.data.Dataset  # dataset[k]: training example k (dict of tensors), a pure function of (seed, k)

    @staticmethod
    def read_config(checkpoint: Path) -> Config:
        """The run config stored by `export` (a resumed run continues with it)."""

    def summary(self) -> str:
        """What the run trains on, for the start line (e.g. "40 clips (2 too short, 3 for previews)")."""

    def build_model(self) -> nn.Module:
        """The trainable model, freshly initialised (the loop seeds torch first)."""

    def param_groups(self, model: nn.Module) -> list[dict]:
        """AdamW groups {"params", "lr", "name"}: every parameter once; the first group has the base rate."""

    def loss(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """"loss" (scalar or per-sample; the loop averages it) and `log_terms`, for a batch of `dataset` items on
        the model's device. `model` may be wrapped (DDP): call it, do not reach into it."""

    def previewer(self, device) -> Callable[[nn.Module], np.ndarray] | None:
        """A function rendering a preview image (uint8 [H, W, 3]) with the given (EMA) model, or None."""

    def export(self, model: nn.Module, directory: Path) -> None:
        """Write `model` (the EMA weights) as an inference checkpoint: a from_pretrained folder."""

    def restore(self, model: nn.Module, directory: Path) -> None:
        """Load the weights that `export` wrote to `directory` into `model` (the EMA, on resume)."""

    # Optional (looked up with hasattr / getattr; DiffusionAct's staged protocol uses them):
    #   unused_parameters = True: some parameters get no gradient in some steps (DDP must search for them)
    #   scheduler(optimizer) -> a torch LR scheduler stepped once per optimizer step, instead of the loop's cosine
    #   ema_updates(step) -> int: the update count the EMA's decay warm-up uses at `step` (default: step)


# Config.method -> "module:Class" of its recipe (imported on first use)
def recipe_class(method: str) -> type:
    """The training recipe class of `method`, from the methods registry; AnchorfaceError naming the trainable
    methods for an unknown or untrainable one."""
    from anchorface.methods.registry import get_method, method_names

    trainable = [n for n in method_names() if get_method(n).recipe is not None]
    if method not in trainable:
        raise AnchorfaceError(f"method {method!r} has no training recipe; trainable methods: {', '.join(trainable)}")
    return get_method(method).load_recipe()
