"""The package's floors (docs/design.md): imports point downward only, and the heavy optional libraries are
imported only in the leaf modules named for them."""

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "anchorface"
FLOORS = {"errors": 0, "devices": 1, "config": 1, "io": 2, "faces": 3, "frozen": 3, "diffusion": 3, "data": 4,
          "methods": 5, "training": 6, "evaluation": 6, "curation": 6, "apps": 7}
LEAVES = {  # library -> the only modules that may import it
    "ray": {"curation/runner.py"},
    "gradio": {"apps/web.py"},
    "matplotlib": {"evaluation/report.py", "curation/stats.py", "curation/scene_study.py"},
    "tensorboard": {"training/loop.py"},
}
IMPORT = re.compile(r"^\s*(?:from|import)\s+([\w.]+)", re.M)


def modules():
    return [p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"]


def home(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def upward_imports(src: str, text: str) -> list[str]:
    """The anchorface imports in `text` (a module of folder `src`) that do not point to a lower floor."""
    out = []
    for name in IMPORT.findall(text):
        if name.startswith("anchorface.") and (dst := name.split(".")[1]) != src and FLOORS[dst] >= FLOORS[src]:
            out.append(name)
    return out


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_downward(path):
    if home(path) in FLOORS:  # (the package's __init__ re-exports lazily)
        assert upward_imports(home(path), path.read_text()) == []


def test_heavy_libraries_only_in_their_leaf_modules():
    for path in modules():
        rel = str(path.relative_to(PACKAGE))
        for name in IMPORT.findall(path.read_text()):
            lib = name.split(".")[0]
            if lib in LEAVES:
                assert rel in LEAVES[lib], f"{rel} imports {lib}; only {sorted(LEAVES[lib])} may"


def test_the_layering_check_can_fail():
    """Upward and sideways imports are caught (the checks above are not vacuous)."""
    assert upward_imports("io", "from anchorface.apps.cli import main") == ["anchorface.apps.cli"]
    assert upward_imports("training", "    from anchorface.evaluation import metrics") == ["anchorface.evaluation"]
    assert upward_imports("apps", "from anchorface.io.video import iter_frames") == []
