"""The registry of reenactment methods: name -> `MethodSpec` (a lazy import string, never the module itself).

Importing this module imports no method (no torch): `reenact --method`, `evaluate --methods` and their `--help`
list the names, and a method's module is imported by `MethodSpec.load` when it is used. Each entry may name its
training recipe the same way (`spec.recipe`, loaded by `spec.load_recipe()`).

Table 1's columns (§4.3) come from here: a method with `variants` gives one column per variant (and checkpoint),
a `baseline` one column under the "baseline" group.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from anchorface.errors import AnchorfaceError
from anchorface.methods.anchored.plans import KINDS


@dataclass(frozen=True)
class MethodSpec:
    name: str  # command-line name (`--method NAME`)
    target: str  # "module:Class" of its `Reenactor`
    summary: str  # one line for --help and reports
    title: str  # its column title in reports
    needs_checkpoint: bool = True  # `from_pretrained` needs a checkpoint directory
    baseline: bool = False  # a reference column, not a model (left out by `evaluate --no-baselines`)
    variant_option: str | None = None  # the option whose values are its Table 1 variants, e.g. "merge"
    variants: tuple[str, ...] = ()
    recipe: str | None = None  # "module:Class" of its training recipe

    def load(self):
        """The method's `Reenactor` class (imports its module)."""
        return _import(self.target, f"method {self.name}")

    def load_recipe(self):
        """The method's training recipe class; AnchorfaceError when it has none."""
        if self.recipe is None:
            raise AnchorfaceError(f"method {self.name} has no training recipe")
        return _import(self.recipe, f"the training recipe of method {self.name}")

    def from_pretrained(self, path=None, device: str = "cpu", **kwargs):
        """Load the method (`Reenactor.from_pretrained`)."""
        if self.needs_checkpoint and path is None:
            raise AnchorfaceError(f"method {self.name} needs a checkpoint directory")
        return self.load().from_pretrained(path, device=device, **kwargs)


def _import(target: str, what: str):
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise AnchorfaceError(f"cannot load {what} ({target}): {e}") from e


_METHODS: dict[str, MethodSpec] = {}


def register(name: str, target: str, *, summary: str, title: str | None = None, replace: bool = False,
             **fields) -> MethodSpec:
    """Add a method under `name` (AnchorfaceError if taken, unless `replace`)."""
    if name in _METHODS and not replace:
        raise AnchorfaceError(f"a method named {name} is already registered")
    if ":" not in target:
        raise AnchorfaceError(f"method {name}: target must be 'module:Class', got {target!r}")
    spec = MethodSpec(name, target, summary, title or name, **fields)
    _METHODS[name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The spec of method `name`; a one-line AnchorfaceError naming the known methods otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        raise AnchorfaceError(f"unknown method '{name}'; choose one of {', '.join(_METHODS)}") from None


def method_names(baselines: bool = True) -> tuple[str, ...]:
    """Registered names in registration order (the models first, then the baselines)."""
    return tuple(n for n, s in _METHODS.items() if baselines or not s.baseline)


register("anchored", "anchorface.methods.anchored.pipeline:AnchoredDiffusion",
         summary="Anchored Diffusion (§3.2): the sDiT over anchored sequences", title="anchored",
         variant_option="merge", variants=KINDS, recipe="anchorface.methods.anchored.training:AnchoredRecipe")
register("diffusionact", "anchorface.methods.diffusionact.pipeline:DiffusionAct",
         summary="DiffusionAct (paper 003): a diffusion autoencoder steered frame by frame by a landmark-conditioned "
                 "reenactment encoder", title="diffusionact",
         recipe="anchorface.methods.diffusionact.training:DiffusionActRecipe")
register("copy-driving", "anchorface.methods.baselines:CopyDriving",
         summary="baseline: the driving face crops (perfect motion, the driving identity)", title="copy driving",
         needs_checkpoint=False, baseline=True)
register("still-source", "anchorface.methods.baselines:StillSource",
         summary="baseline: the source crop held still (perfect identity, no motion)", title="still source",
         needs_checkpoint=False, baseline=True)
