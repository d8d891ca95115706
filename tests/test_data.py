"""Dataset format, `anchorface prepare` and the training sequence sampler (§3.1, supp. §4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anchorface.config import load_config
from anchorface.data.dataset import (
    ClipDataset,
    DatasetWriter,
    SequenceSampler,
    StepSampler,
    check_compatible,
    data_signature,
    load_index,
    sample_training_example,
    segment_bounds,
)
from anchorface.errors import AnchorfaceError



# --------------------------------------------------------------------------------------------------------------
# A synthetic dataset (no faces needed): random latents, face-like landmarks, uint8 source crops
# --------------------------------------------------------------------------------------------------------------

def tiny_cfg(res: int = 16):
    cfg = load_config("tiny")
    cfg.data.resolution = res
    return cfg


# --------------------------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------------------------

def test_sequences_sorted_distinct_nonuniform():
    rng = np.random.default_rng(0)
    spacings, uniform = set(), 0
    for _ in range(500):
        frames, _ = sample_training_example(60, 8, rng)
        assert frames.shape == (8,) and frames.min() >= 0 and frames.max() < 60
        assert np.all(np.diff(frames) > 0)  # sorted and distinct
        d = tuple(np.diff(frames))
        spacings.add(d)
        uniform += len(set(d)) == 1
    assert len(spacings) > 450  # the spacing varies from draw to draw
    assert uniform < 5  # and is almost never uniform within a sequence


def test_source_is_the_end_furthest_from_the_sequence():
    rng = np.random.default_rng(1)
    ends_seen = set()
    for clip_len in (5, 6, 9, 40):
        for _ in range(400):
            frames, src = sample_training_example(clip_len, 4, rng)
            assert src in (0, clip_len - 1) and src not in frames
            d_first, d_last = frames[0] - 0, clip_len - 1 - frames[-1]
            assert (d_first if src == 0 else d_last) == max(d_first, d_last)
            ends_seen.add(src == 0)
    assert ends_seen == {True, False}


def test_short_clips_rule():
    rng = np.random.default_rng(2)
    frames, src = sample_training_example(4, 4, rng)
    assert frames.tolist() == [0, 1, 2, 3] and src == 0
    with pytest.raises(ValueError):
        sample_training_example(3, 4, rng)


def test_joint_dropout_rate_and_determinism():
    s = SequenceSampler([30, 50, 9], num_frames=8, cond_dropout=0.1, seed=7)
    draws = [s(k) for k in range(5000)]
    rate = np.mean([e.drop for e in draws])
    assert 0.08 <= rate <= 0.12
    assert {e.clip for e in draws} == {0, 1, 2}
    again = SequenceSampler([30, 50, 9], num_frames=8, cond_dropout=0.1, seed=7)
    for k in (0, 17, 4999):
        a, b = s(k), again(k)
        assert (a.clip, a.source, a.drop) == (b.clip, b.source, b.drop) and np.array_equal(a.frames, b.frames)
    other = SequenceSampler([30, 50, 9], num_frames=8, cond_dropout=0.1, seed=8)
    assert any(not np.array_equal(s(k).frames, other(k).frames) for k in range(10))
    assert all(not SequenceSampler([30], 8, 0.0, 0)(k).drop for k in range(200))


def test_step_sampler_partitions_the_global_batch():
    G, A, P, L = 12, 2, 3, 2
    seen = []
    for r in range(P):
        it = iter(StepSampler(L, A, P, r, start_step=5))
        seen += [next(it) for _ in range(A * L)]  # one optimizer step of process r
    assert sorted(seen) == list(range(5 * G, 6 * G))
    full = list(StepSampler(L, A, P, 1, start_step=0, max_steps=8))
    resumed = list(StepSampler(L, A, P, 1, start_step=3, max_steps=8))
    assert len(full) == 8 * A * L and full[3 * A * L:] == resumed


def test_segment_bounds():
    assert segment_bounds(100, 25.0, 2.0) == [(0, 50), (50, 100)]
    b = segment_bounds(101, 25.0, 2.0)  # 3 equal segments, none longer than 50
    assert len(b) == 3 and b[0][0] == 0 and b[-1][1] == 101 and all(0 < e - s <= 50 for s, e in b)
    assert segment_bounds(10, 25.0, 5.0) == [(0, 10)]
    assert segment_bounds(10, 25.0, 1e308) == [(0, 10)]  # prepare --max-seconds 1e308: one segment, no overflow


# --------------------------------------------------------------------------------------------------------------
# The on-disk format
# --------------------------------------------------------------------------------------------------------------

def test_synthetic_dataset_round_trip(tmp_path, write_synthetic_dataset):
    from safetensors.torch import load_file

    from anchorface.faces.landmarks import landmark_vector

    cfg = tiny_cfg(16)
    root = tmp_path / "ds"
    index = write_synthetic_dataset(root, cfg, num_clips=5, frames=(12, 20, 9, 3, 7), shard_bytes=40_000)
    assert index["format"] == "anchorface-dataset" and index["version"] == 1
    assert index["latent_shape"] == [48, 4, 4] and index["source_kind"] == "pixels"
    assert index["data"]["resolution"] == 16 and index["data"]["codec"] == "pixel"
    shards = sorted({c["shard"] for c in index["clips"]})
    assert len(shards) >= 2  # rotation
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]  # nothing left half-written
    stored = {}
    for s in shards:
        stored |= load_file(root / s)
    assert stored["clip1-000/latents"].dtype == torch.float16 and stored["clip1-000/latents"].shape == (20, 48, 4, 4)
    assert stored["clip0-000/landmarks"].dtype == torch.float32
    assert stored["clip0-000/source_first"].dtype == torch.uint8

    ds = ClipDataset(root, num_frames=4, cond_dropout=0.1, lambda_ex=1.0, seed=0)
    assert ds.skipped_short == 1 and len(ds.clips) == 4  # the 3-frame clip is left out
    for k in range(20):
        ex, item = ds.sampler(k), ds[k]
        c = ds.clips[ex.clip]["name"]
        assert item["latents"].shape == (4, 48, 4, 4) and item["latents"].dtype == torch.float32
        torch.testing.assert_close(item["latents"], stored[f"{c}/latents"][ex.frames].float())
        lmk = stored[f"{c}/landmarks"][ex.frames].numpy()
        np.testing.assert_allclose(item["landmarks"].numpy(), landmark_vector(lmk))
        assert item["weight"].shape == (4, 1, 4, 4) and set(item["weight"].unique().tolist()) <= {1.0, 2.0}
        end = "first" if ex.source == 0 else "last"
        px = stored[f"{c}/source_{end}"].permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(item["source"], px)
        assert item["source"].min() >= -1 and item["source"].max() <= 1
        assert bool(item["drop"]) == ex.drop and int(item["index"]) == k
    assert any(bool((ds[k]["weight"] > 1).any()) for k in range(5))

    # the same examples through worker processes
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=StepSampler(2, 1, 1, 0, 0, 3), num_workers=2)
    batches = list(loader)
    assert len(batches) == 3 and batches[1]["index"].tolist() == [2, 3]
    torch.testing.assert_close(batches[1]["latents"][0], ds[2]["latents"])


def test_embedding_sources_and_compatibility(tmp_path, write_synthetic_dataset):
    cfg = tiny_cfg(16)
    cfg.data.encoder, cfg.model.global_dim = "clip", 24
    index = write_synthetic_dataset(tmp_path / "e", cfg, embeddings=True)
    assert index["source_kind"] == "embedding" and index["global_dim"] == 24
    ds = ClipDataset(tmp_path / "e", 4, 0.1, 1.0, 0)
    assert ds[0]["source"].shape == (24,) and ds[0]["source"].dtype == torch.float32
    check_compatible(index, cfg)
    cfg.model.global_dim = 32
    with pytest.raises(AnchorfaceError, match="global_dim"):
        check_compatible(index, cfg)
    other = tiny_cfg(32)
    with pytest.raises(AnchorfaceError, match="resolution"):
        check_compatible(index, other)


def test_invalid_datasets(tmp_path, write_synthetic_dataset):
    cfg = tiny_cfg(16)
    with pytest.raises(AnchorfaceError, match="not found"):
        load_index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnchorfaceError, match="anchorface prepare"):
        load_index(tmp_path / "empty")
    write_synthetic_dataset(tmp_path / "d", cfg)
    with pytest.raises(AnchorfaceError, match="overwrite"):
        write_synthetic_dataset(tmp_path / "d", cfg)
    idx = json.loads((tmp_path / "d/index.json").read_text())
    (tmp_path / "d" / idx["clips"][0]["shard"]).unlink()
    with pytest.raises(AnchorfaceError, match="missing"):
        load_index(tmp_path / "d")
    (tmp_path / "d/index.json").write_text("{not json")
    with pytest.raises(AnchorfaceError, match="JSON"):
        load_index(tmp_path / "d")
    with pytest.raises(AnchorfaceError, match="at least 4 frames"):
        write_synthetic_dataset(tmp_path / "s", cfg, num_clips=2, frames=(3,))
        ClipDataset(tmp_path / "s", 4, 0.1, 1.0, 0)


def test_overwrite_replaces_the_dataset_only_when_complete(tmp_path, write_synthetic_dataset, synthetic_landmarks):
    cfg = tiny_cfg(16)
    root = tmp_path / "d"
    old = write_synthetic_dataset(root, cfg, num_clips=2, seed=0)
    shape, data = (48, 4, 4), data_signature(cfg.data)
    rng = np.random.default_rng(1)
    with pytest.raises(KeyboardInterrupt):  # an interrupted `prepare --overwrite`
        with DatasetWriter(root, data, shape, overwrite=True) as w:
            w.add_clip("new-000", rng.normal(size=(9, *shape)), synthetic_landmarks(9, rng),
                       *(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(2)), fps=25.0)
            w._flush()  # a new shard is on disk...
            assert load_index(root) == old  # ...but the old dataset is still complete meanwhile
            raise KeyboardInterrupt
    assert load_index(root) == old and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    with pytest.raises(AnchorfaceError, match="no clip"):  # nothing to write: the old dataset stays too
        with DatasetWriter(root, data, shape, overwrite=True):
            pass
    assert load_index(root) == old and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    new = write_synthetic_dataset(root, cfg, num_clips=3, seed=2, overwrite=True)
    assert len(new["clips"]) == 3 and load_index(root) == new
    assert sorted(p.name for p in root.iterdir()) == ["index.json", "shards"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(AnchorfaceError, match="notes.txt"):  # a folder is replaced whole: refuse a foreign one
        write_synthetic_dataset(tmp_path / "mine", cfg)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------------------------------------------
# `anchorface prepare` on a real face clip (~1 s of a driving video) and a clip without a face
# --------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def videos(tmp_path_factory, face_corpus):
    from anchorface.io.video import VideoWriter, iter_frames

    root = tmp_path_factory.mktemp("videos")
    with VideoWriter(root / "face.mp4", 25) as w:
        for frame in iter_frames(face_corpus / "driving/d0.mp4", max_frames=25):
            w.write(frame)
    rng = np.random.default_rng(0)
    with VideoWriter(root / "noface.mp4", 25) as w:
        for _ in range(6):
            w.write(np.repeat(rng.integers(0, 255, (1, 256, 3), dtype=np.uint8), 256, axis=0))
    (root / "notes.txt").write_text("not a video")
    return root


def test_prepare_real_clip(videos, tmp_path):
    from anchorface.apps.cli import main
    from anchorface.frozen.codecs import PixelCodec
    from anchorface.data.dataset import prepare_dataset

    cfg = tiny_cfg(32)
    with pytest.warns(UserWarning, match="noface.mp4"):
        summary = prepare_dataset(videos, tmp_path / "ds", cfg, max_seconds=0.5, progress=False)
    assert summary == {"videos": 2, "clips": 3, "frames": 25, "skipped_no_face": 1, "skipped_unreadable": 0,
                       "skipped_faceless_stretches": 0, "skipped_faceless_frames": 0}
    index = load_index(tmp_path / "ds")
    check_compatible(index, cfg)
    assert [c["num_frames"] for c in index["clips"]] == [8, 9, 8]  # 1 s cut into equal segments <= 0.5 s
    assert {c["source_video"] for c in index["clips"]} == {"face.mp4"} and index["clips"][0]["fps"] == 25.0
    assert index["latent_shape"] == [48, 8, 8] and index["data"]["codec_config"] == {"type": "pixel", "factor": 4}

    from safetensors.torch import load_file

    t = load_file(tmp_path / "ds" / index["clips"][1]["shard"])
    name = index["clips"][1]["name"]
    lmk = t[f"{name}/landmarks"].numpy()
    assert lmk.shape == (9, 478, 3) and np.all((lmk[..., :2] > 0) & (lmk[..., :2] < 1))
    assert abs(lmk[..., 0].mean() - 0.5) < 0.1 and abs(lmk[..., 1].mean() - 0.55) < 0.15  # a centred face
    # the stored first/last crops are the frames the latents encode
    px = PixelCodec(4).decode(t[f"{name}/latents"].float())
    for end, i in (("first", 0), ("last", -1)):
        crop = t[f"{name}/source_{end}"].permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(px[i], crop, atol=2e-3, rtol=0)

    # the CLI: the same command, and one-line errors for an empty or missing folder
    assert main(["prepare", str(videos), str(tmp_path / "ds"), "--config", "tiny", "--quiet"]) == 1  # exists
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), str(tmp_path / "x"), "--quiet"]) == 1
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "x"), "--quiet"]) == 1


def test_prepare_with_a_frozen_clip_encoder_stores_embeddings(videos, tmp_path):
    """`clip` G is frozen, so prepare stores the CLIP embeddings of the first and last frame (a tiny random CLIP)."""
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel

    from anchorface.frozen.codecs import PixelCodec
    from anchorface.data.dataset import prepare_dataset
    from anchorface.frozen.encoders import CLIPGlobalEncoder

    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    clip_dir = tmp_path / "clip"
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, max_position_embeddings=16),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=8),
                         projection_dim=16)).save_pretrained(clip_dir)
    Processor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip_dir)

    cfg = tiny_cfg(32)
    cfg.data.encoder, cfg.data.encoder_path, cfg.model.global_dim = "clip", str(clip_dir), 16
    prepare_dataset(videos, tmp_path / "ds", cfg, max_seconds=10, progress=False)
    index = load_index(tmp_path / "ds")
    assert index["source_kind"] == "embedding" and index["global_dim"] == 16
    assert index["data"]["encoder_path"] == str(clip_dir)
    (clip,) = index["clips"]
    t = load_file(tmp_path / "ds" / clip["shard"])
    first, last = t[f"{clip['name']}/source_first"], t[f"{clip['name']}/source_last"]
    assert first.shape == (16,) and first.dtype == torch.float32 and not torch.allclose(first, last)
    ends = PixelCodec(4).decode(t[f"{clip['name']}/latents"][[0, -1]].float())  # the crops, up to fp16 rounding
    expected = CLIPGlobalEncoder(clip_dir).encode_images(ends)
    err = (torch.stack([first, last]) - expected).norm(dim=1)
    assert err.max() < 0.02 * (first - last).norm()  # far closer than the two ends are to each other
    ds = ClipDataset(tmp_path / "ds", 4, 0.1, 1.0, 0)
    assert ds[0]["source"].shape == (16,)


def test_signal_dropout_is_independent_and_off_by_default():
    base = SequenceSampler([30, 50, 9], num_frames=4, cond_dropout=0.1, seed=3)
    same = SequenceSampler([30, 50, 9], num_frames=4, cond_dropout=0.1, seed=3, signal_dropout=0.0)
    per = SequenceSampler([30, 50, 9], num_frames=4, cond_dropout=0.1, seed=3, signal_dropout=0.3)
    n = 4000
    a, b, c = [base(k) for k in range(n)], [same(k) for k in range(n)], [per(k) for k in range(n)]
    key = lambda e: (e.clip, e.source, e.drop, e.drop_global, e.drop_landmarks, tuple(e.frames))  # noqa: E731
    assert [key(e) for e in a] == [key(e) for e in b] and not any(e.drop_global or e.drop_landmarks for e in a)
    # the joint draw, clip, frames and source are unchanged by the per-signal draws
    assert all((x.clip, x.source, x.drop) == (y.clip, y.source, y.drop) and np.array_equal(x.frames, y.frames)
               for x, y in zip(a, c))
    g = np.array([e.drop_global for e in c])
    lm = np.array([e.drop_landmarks for e in c])
    assert abs(g.mean() - 0.3) < 0.03 and abs(lm.mean() - 0.3) < 0.03
    assert abs((g & lm).mean() - 0.09) < 0.02, "independent draws"
    with pytest.raises(AnchorfaceError, match="signal_dropout"):
        SequenceSampler([30], num_frames=4, cond_dropout=0.1, seed=0, signal_dropout=1.5)
