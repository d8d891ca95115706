"""`--device` names: one check shared by reenact, evaluate, prepare and `AnchorFacePipeline.from_pretrained`."""

import pytest
import torch

from anchorface.devices import resolve_device
from anchorface.errors import AnchorfaceError


def test_auto_and_cpu():
    assert resolve_device("auto") == resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == "cpu"


def test_unknown_device_is_one_line():
    with pytest.raises(AnchorfaceError, match="unknown device 'gpu0'") as e:
        resolve_device("gpu0")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path):
    for name in ("cuda", "cuda:1"):
        with pytest.raises(AnchorfaceError, match="CUDA is not available; use --device cpu"):
            resolve_device(name)
    from anchorface.methods.anchored.pipeline import AnchorFacePipeline

    # from_pretrained checks the device itself (so `anchorface demo --device cuda` gets the same one line), before
    # looking at the checkpoint
    with pytest.raises(AnchorfaceError, match="CUDA is not available"):
        AnchorFacePipeline.from_pretrained(tmp_path / "no-checkpoint", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_out_of_range():
    n = torch.cuda.device_count()
    assert resolve_device(f"cuda:{n - 1}") == f"cuda:{n - 1}"
    with pytest.raises(AnchorfaceError, match="does not exist"):
        resolve_device(f"cuda:{n}")
