"""Optional dependencies (pip extras): a command whose extra is missing says, in one line, which one to install;
the demo runs with none of them. A missing package is simulated with `sys.modules[name] = None`, which makes
`import name` raise ModuleNotFoundError exactly as when it is not installed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anchorface.apps.cli import main
from anchorface.errors import AnchorfaceError, MissingExtraError, require
from anchorface.evaluation import protocols
from anchorface.frozen.encoders import CLIPGlobalEncoder

SRC = Path(__file__).resolve().parents[1] / "src"


def uninstall(monkeypatch, name):
    """As if package `name` were not installed: it and its already imported submodules cannot be imported."""
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")] or [name]:
        monkeypatch.setitem(sys.modules, mod, None)


def test_require_imports_or_names_the_extra(monkeypatch):
    assert require("json", "x", "json things").dumps([1]) == "[1]"
    uninstall(monkeypatch, "tensorboard")
    with pytest.raises(MissingExtraError) as e:
        require("tensorboard", "train", "training")
    assert isinstance(e.value, AnchorfaceError)
    assert str(e.value) == "training needs the 'train' extra: pip install 'anchorface[train]'"
    uninstall(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError, match=r"^plots needs the 'eval' extra: pip install 'anchorface\[eval\]'$"):
        require("matplotlib.figure", "eval", "plots")


def test_require_names_a_missing_package_of_the_extra(monkeypatch, tmp_path):
    """The extra is there but a package it needs is not (installing the extra again brings it)."""
    (tmp_path / "halfinstalled").mkdir()
    (tmp_path / "halfinstalled" / "__init__.py").write_text("import anchorface_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError, match=r"^plots needs the 'eval' extra \(no module named "
                       r"'anchorface_no_such_dependency'\): pip install 'anchorface\[eval\]'$"):
        require("halfinstalled", "eval", "plots")


def test_train_without_the_train_extra_is_one_line(monkeypatch, tmp_path, capsys):
    uninstall(monkeypatch, "accelerate")
    assert main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "run"), "--quiet"]) == 1
    assert capsys.readouterr().err == ("anchorface: error: training needs the 'train' extra: "
                                       "pip install 'anchorface[train]'\n")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_evaluate_without_the_eval_extra_fails_before_any_work(monkeypatch, tmp_path, capsys):
    uninstall(monkeypatch, "matplotlib")
    args = ["evaluate", "--checkpoint", str(tmp_path / "no-checkpoint"), "--driving", str(tmp_path),
            "--output", str(tmp_path / "report"), "--protocol", "self", "--quiet"]
    assert main(args) == 1  # (the checkpoint does not even exist: the extra is checked first)
    assert capsys.readouterr().err == ("anchorface: error: evaluate needs the 'eval' extra: "
                                       "pip install 'anchorface[eval]'\n")
    with pytest.raises(MissingExtraError, match="evaluate's plots needs the 'eval' extra"):
        protocols.plot_consistency([], tmp_path / "fig5.png")


def test_clip_without_the_clip_extra(monkeypatch, tmp_path):
    uninstall(monkeypatch, "transformers")
    with pytest.raises(MissingExtraError, match=r"^CLIP needs the 'clip' extra: pip install 'anchorface\[clip\]'$"):
        CLIPGlobalEncoder(tmp_path)


BLOCK_EXTRAS = """
import sys
for name in ("transformers", "accelerate", "tensorboard"):
    sys.modules[name] = None  # as if not installed: importing them fails
from anchorface.apps.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_demo_needs_no_extra(tmp_path):
    """The Quickstart installs the core only (`pip install -e .`): the demo must run without the extras."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", BLOCK_EXTRAS, "demo", "-o", str(tmp_path), "--frames", "4",
                          "--steps", "1", "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "reenacted.mp4").stat().st_size > 0 and (tmp_path / "compare.mp4").stat().st_size > 0
