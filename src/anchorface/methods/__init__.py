"""Reenactment methods, one folder each, behind one interface (`base.Reenactor`), listed in `registry`; the video
flow every method shares is `flow`. Importing this package imports no method (nor torch)."""

from anchorface.methods.registry import MethodSpec, get_method, method_names, register  # noqa: F401
