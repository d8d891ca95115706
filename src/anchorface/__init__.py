"""anchorface: Anchored Diffusion for video face reenactment (Kligvasser et al., 2024).

One photo of a face + a driving video -> a long, seamless video of that face performing the driving motion.
"""

__version__ = "0.1.0"

from anchorface.errors import AnchorfaceError  # noqa: F401


def __getattr__(name: str):
    """`anchorface.AnchorFacePipeline` without importing torch at `import anchorface`."""
    if name == "AnchorFacePipeline":
        from anchorface.methods.anchored.pipeline import AnchorFacePipeline

        return AnchorFacePipeline
    raise AttributeError(f"module 'anchorface' has no attribute {name!r}")
