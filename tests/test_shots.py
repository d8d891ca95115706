"""Multi-shot driving videos (§5, one anchor per shot) and one video on many processes (rank split, gloo)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorface.devices import World
from anchorface.io.shots import detect_cuts, shot_ranges
from anchorface.io.video import VideoWriter, iter_frames, probe_video
from anchorface.methods.anchored.plans import make_plan, make_shot_plans, split_rows

SHOT_A, SHOT_B = 24, 20  # frames taken from d18 then d19 (both 480x480, 30 fps; the closest pair in colour)


@pytest.fixture(scope="module")
def two_shots(tmp_path_factory, face_corpus) -> Path:
    """Two different real clips back to back: d18's first SHOT_A frames, then d19's first SHOT_B (a cut at SHOT_A)."""
    out = tmp_path_factory.mktemp("shots") / "two_shots.mp4"
    src = face_corpus / "driving"
    with VideoWriter(out, probe_video(src / "d18.mp4").fps) as w:
        for name, n in (("d18", SHOT_A), ("d19", SHOT_B)):
            for frame in iter_frames(src / f"{name}.mp4", max_frames=n):
                w.write(frame)
    return out


# ---------------------------------------------------------------------------------------------------- cut detection

def test_cut_found_where_the_clips_meet(two_shots):
    cuts, n = detect_cuts(iter_frames(two_shots), float(probe_video(two_shots).fps))
    assert n == SHOT_A + SHOT_B
    assert len(cuts) == 1 and abs(cuts[0] - SHOT_A) <= 1


@pytest.mark.parametrize("name", ["d12", "d20"])  # the two clips with the fastest motion of the corpus
def test_no_cut_inside_one_real_shot(face_corpus, name):
    path = face_corpus / f"driving/{name}.mp4"
    cuts, n = detect_cuts(iter_frames(path), float(probe_video(path).fps))
    assert cuts == [] and n > 100


def test_shot_ranges():
    assert shot_ranges([], 5) == [(0, 5)]
    assert shot_ranges([3, 0, 7, 3], 7) == [(0, 3), (3, 7)]


# ------------------------------------------------------------------------------- tracking restarts at the cut

def test_crop_track_and_landmarks_restart_at_the_cut(two_shots):
    """With shots, each shot's crop boxes (smoothing) and landmarks (tracker) are exactly those of that shot alone;
    without, the smoothing slides across the cut."""
    from anchorface.faces.detect import track_video

    frames = list(iter_frames(two_shots))
    whole = track_video(two_shots, 32, shots=True, fps=30, progress=False)
    assert whole.cuts == (SHOT_A,)
    for a, b in shot_ranges(whole.cuts, len(frames)):
        alone = track_video(frames[a:b], 32, progress=False)
        np.testing.assert_array_equal(whole.boxes[a:b], alone.boxes)
        np.testing.assert_array_equal(whole.landmarks[a:b], alone.landmarks)
    one = track_video(two_shots, 32, shots=False, progress=False)
    assert one.cuts == () and not np.allclose(one.boxes[SHOT_A:], whole.boxes[SHOT_A:], atol=1.0)


# ------------------------------------------------------------------------------------------------ planning

@pytest.mark.parametrize("kind", ["anchored", "anchored-sorted", "independent", "multidiffusion"])
@pytest.mark.parametrize("cuts", [(), (24,), (5, 6, 30)])
def test_shot_plans_never_cross_a_cut_and_render_each_frame_once(kind, cuts):
    n, T = 44, 4
    shots = make_shot_plans(kind, shot_ranges(cuts, n), T)
    counts = np.zeros(n, int)
    for (a, b), slots, plan in zip(shots.shots, shots.timeline_slots(), shots.plans):
        assert slots.min() >= a and slots.max() < b  # no sequence spans a cut
        np.add.at(counts, slots[plan.owner], 1)
        if plan.anchor is not None:
            assert plan.anchor == (b - a) // 2  # each shot's own central frame (§3.2)
    if kind != "multidiffusion":
        assert np.all(counts == 1)
    assert shots.num_sequences == sum(p.num_sequences for p in shots.plans)
    if not cuts:
        assert np.array_equal(shots.plans[0].slots, make_plan(kind, n, T).slots)


@pytest.mark.parametrize("kind", ["anchored", "anchored-sorted", "independent"])
@pytest.mark.parametrize("n,T,world", [(23, 4, 2), (101, 8, 3), (9, 4, 4), (200, 4, 5), (3, 4, 2)])
def test_rank_split(kind, n, T, world):
    plan = make_plan(kind, n, T)
    split = split_rows(plan, world)
    assigned = np.concatenate(split.assigned)
    assert sorted(assigned.tolist()) == list(range(plan.num_sequences))  # each row rendered by one rank
    assert 0 in split.assigned[0]
    frames = np.concatenate(split.frames)
    assert sorted(frames.tolist()) == list(range(n))  # each frame rendered by one rank
    for r in range(world):
        run = split.rows[r]
        if len(run) and plan.anchor is not None:
            assert run[0] == 0  # the anchor's donor is recomputed, not received
        owned = set(plan.slots[run][plan.owner[run]].tolist()) if len(run) else set()
        reads = set(plan.slots[run].ravel().tolist()) if len(run) else set()
        assert set(split.imports[r].tolist()) == reads - owned
        for f in split.imports[r]:
            q = next(q for q in range(world) if f in split.frames[q])
            assert q != r and f in split.exports[q]
    sizes = [len(a) for a in split.assigned]
    assert max(sizes) - min(s for s in sizes) <= 2


def test_column_layout_needs_the_exchange():
    """The project's column layout overlaps windows (T even): a split without the halo exchange would be wrong."""
    split = split_rows(make_plan("anchored", 23, 4), 2)
    assert split.exchanges and len(split.imports[1]) >= 1


# ------------------------------------------------------------------------------------ multi-shot reenactment

def test_multi_shot_reenact(tiny_checkpoint, two_shots, face_corpus, tmp_path, monkeypatch):
    """End to end: two shots, each sampled on its own plan (no sequence crosses the cut), every frame written once,
    and the noise of each frame the one it has in the whole video."""
    from anchorface.methods.anchored import pipeline as pipeline_mod

    calls = []
    real = pipeline_mod.anchored_diffusion

    def spy(model, diffusion, plan, g, lmk, **kw):
        calls.append((kw["frame_offset"], plan))
        return real(model, diffusion, plan, g, lmk, **kw)

    monkeypatch.setattr(pipeline_mod, "anchored_diffusion", spy)
    pipe = pipeline_mod.AnchorFacePipeline.from_pretrained(tiny_checkpoint)
    out = tmp_path / "out.mp4"
    res = pipe.reenact(face_corpus / "source/s1.jpg", two_shots, out, steps=1, progress=False)
    assert res.num_shots == 2 and "2 shots" in res.summary
    assert [(o, p.num_frames) for o, p in calls] == [(0, SHOT_A), (SHOT_A, SHOT_B)]
    assert probe_video(out).num_frames == SHOT_A + SHOT_B == len(list(iter_frames(out)))
    calls.clear()
    res = pipe.reenact(face_corpus / "source/s1.jpg", two_shots, out, steps=1, progress=False, shots="off")
    assert res.num_shots == 1 and [(o, p.num_frames) for o, p in calls] == [(0, SHOT_A + SHOT_B)]


# ------------------------------------------------------------------------------------------ many processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = [((9,), dict(micro_batch=1, sampler="dpmpp-2m", steps=3)),  # two shots, a multistep solver
         ((), dict(micro_batch=1, sampler="ddpm", steps=2)),  # one shot, per-frame noise at every step
         ((9,), dict(micro_batch=3, sampler="ddim", steps=2))]


def _rank_worker(rank, world, port, checkpoint, lmk, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from anchorface.methods.anchored.pipeline import AnchorFacePipeline

        pipe = AnchorFacePipeline.from_pretrained(checkpoint)
        g = torch.ones(1, pipe.config.model.global_dim)
        zs = [pipe.generate(g, lmk, cuts=cuts, world=World(rank, world, rank), progress=False, **options)
              for cuts, options in CASES]
        if rank == 0:
            torch.save(zs, out)
        else:
            assert all(z is None for z in zs)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_two_processes_equal_one(tiny_checkpoint, tmp_path):
    """2 gloo processes (each recomputing sequence 0, exchanging the overlap frames, gathering at the end) give the
    latents of one process: bit-equal with one sequence per forward pass; with larger micro-batches the batched
    matmuls round differently, within the sampler's micro-batching tolerance."""
    from anchorface.methods.anchored.pipeline import AnchorFacePipeline

    rng = np.random.default_rng(0)
    lmk = rng.uniform(0.2, 0.8, (23, 478, 3)).astype(np.float32)
    pipe = AnchorFacePipeline.from_pretrained(tiny_checkpoint)
    g = torch.ones(1, pipe.config.model.global_dim)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: bit-equality needs the same kernels (CI runs with 2 threads)
    try:
        refs = [pipe.generate(g, lmk, cuts=cuts, progress=False, **options) for cuts, options in CASES]
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "z.pt"
    torch.multiprocessing.spawn(_rank_worker, nprocs=2, args=(2, _free_port(), str(tiny_checkpoint), lmk, str(out)))
    for z, ref, (cuts, options) in zip(torch.load(out), refs, CASES):
        assert z.shape == ref.shape == (23, *pipe.latent_shape)
        if options["micro_batch"] == 1:
            assert torch.equal(z, ref), (cuts, options)
        else:
            assert (z - ref).abs().max().item() <= 1e-5, (cuts, options)


def test_torchrun_reenact_equals_one_process(tiny_checkpoint, two_shots, face_corpus, tmp_path):
    """`torchrun --nproc-per-node 2 -m anchorface reenact ...` (gloo on the CPU) writes the video one process
    writes, frame for frame, and only rank 0 writes."""
    args = ["reenact", str(face_corpus / "source/s1.jpg"), str(two_shots), "--checkpoint", str(tiny_checkpoint),
            "--steps", "2", "--micro-batch", "1", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    one, two = tmp_path / "one" / "o.mp4", tmp_path / "two" / "o.mp4"
    one.parent.mkdir()
    two.parent.mkdir()
    r = subprocess.run([sys.executable, "-m", "anchorface", *args, "-o", str(one)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(_free_port()), "-m", "anchorface", *args, "-o", str(two)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = list(iter_frames(one)), list(iter_frames(two))
    assert len(a) == len(b) == SHOT_A + SHOT_B and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sorted(p.name for p in two.parent.iterdir()) == ["o.mp4"]
