"""Training data: `anchorface prepare` (clip shards + index) and the training sequence sampler (§3.1).

Everything frozen is computed once by `prepare`, so training never runs the face detector, MediaPipe, the VAE or
CLIP in its inner loop (§3.1: "the landmark model, CLIP, and the autoencoder remain frozen").

On-disk format (version 1; see also docs/dataset.md)::

    DATASET_DIR/index.json      written last: its presence means the dataset is complete
        {"format": "anchorface-dataset", "version": 1,
         "data": {"resolution", "codec", "pixel_factor" | "codec_path", "encoder", ["encoder_path"],
                  "codec_config": codec.config},          # what the frozen parts were
         "latent_shape": [C, h, w], "source_kind": "embedding" | "pixels", "global_dim": D | null,
         "clips": [{"name", "shard", "num_frames", "fps", "source_video"}, ...]}
    DATASET_DIR/shards/shard-00000.safetensors, ...  (rotated at ~256 MB; a clip never spans two shards)
        <clip>/latents        float16 [N, C, h, w]   codec.encode of the face crops at data.resolution
        <clip>/landmarks      float32 [N, 478, 3]    MediaPipe face mesh on the same crops at
                                                     `landmarks.landmark_crop_size(resolution)` px (>= 256)
        <clip>/source_first   the clip's first frame as a source candidate:
        <clip>/source_last    and its last:  float32 [D] global embedding (`clip` encoder, frozen), or
                              uint8 [res, res, 3] crop pixels (`learned` encoder, trained jointly)

A clip is a segment of at most `--max-seconds` of one video (long videos are cut into equal segments). The dataset
is written into a temporary sibling folder (index last) that is renamed onto DATASET_DIR only when complete, so an
interrupted `prepare --overwrite` leaves the previous dataset intact.

The sampler (§3.1): training example `k` is a pure function of `(seed, k)`: a clip drawn uniformly, T distinct
sorted frames drawn uniformly at random from it (non-uniform spacing), the source frame furthest in time from the
sequence (the clip's first or last frame) and the joint condition dropout flag (supp. §4). Resuming at step s
therefore replays exactly the examples an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from anchorface.frozen.codecs import to_pixels
from anchorface.config import Config, DataConfig
from anchorface.errors import AnchorfaceError, AnchorfaceWarning, NoFaceError, VideoError, one_line
from anchorface.io.atomic import atomic_output, write_safetensors
from anchorface.io.manifest import manifest_in, read_manifest, write_json

FORMAT, VERSION = "anchorface-dataset", 1
INDEX = "index.json"
SHARD_DIR = "shards"
SHARD_BYTES = 256 * 2**20  # start a new shard when the current one would exceed this
DEFAULT_MAX_SECONDS = 5.0  # segment length cap; the paper's segments are 3.29 +- 2.07 s (§3.3)
ENCODE_BATCH = 16  # frames per codec.encode call
MAX_FACELESS_SECONDS = 0.5  # a longer stretch without a face is cut out of the clips (counted in the summary)
WRITER_PID = ".writer-pid"  # "host pid" of the process filling a temporary dataset folder (stale when it is gone)


# --------------------------------------------------------------------------------------------------------------
# Format: what the frozen parts were, the shard writer, the index
# --------------------------------------------------------------------------------------------------------------

def data_signature(data: DataConfig) -> dict:
    """The DataConfig fields a prepared dataset depends on (a dataset is usable by any config that matches)."""
    sig = {"resolution": int(data.resolution), "codec": data.codec, "encoder": data.encoder}
    if data.codec == "pixel":
        sig["pixel_factor"] = int(data.pixel_factor)
    else:
        sig["codec_path"] = str(data.codec_path)
    if data.encoder == "clip":
        sig["encoder_path"] = str(data.encoder_path)
    return sig


class DatasetWriter:
    """Writes clips into rotating safetensors shards and, on a clean exit, the index (last).

    with DatasetWriter(dir, data=data_signature(cfg.data) | {...}, latent_shape=(C, h, w)) as w:
        w.add_clip(name, latents=[N,C,h,w], landmarks=[N,478,3], source_first=..., source_last=..., fps=..,
                   source_video=..)

    `source_*` are float [D] embeddings or uint8 [res, res, 3] crops (one kind per dataset). An existing dataset
    in `dataset_dir` is an error unless `overwrite`. The new dataset is written into a temporary sibling directory
    that replaces `dataset_dir` only once its index is written (`io.atomic.atomic_output`): if the block raises, or the
    run is interrupted, an existing dataset is left as it was and nothing new appears.
    """

    def __init__(self, dataset_dir: str | Path, data: dict, latent_shape, overwrite: bool = False,
                 shard_bytes: int = SHARD_BYTES):
        self.dir = Path(dataset_dir)
        if self.dir.exists() and not self.dir.is_dir():
            raise AnchorfaceError(f"dataset path {self.dir} exists and is not a directory")
        if (self.dir / INDEX).exists() and not overwrite:
            raise AnchorfaceError(f"{self.dir} already holds a dataset (pass --overwrite to replace it)")
        if self.dir.is_dir():  # the whole folder is replaced: it may hold nothing but a dataset
            other = sorted(p.name for p in self.dir.iterdir() if p.name not in (INDEX, SHARD_DIR))
            if other:
                raise AnchorfaceError(f"{self.dir} holds files that are not part of a dataset ({other[0]}"
                                      f"{', ...' if len(other) > 1 else ''}); choose an empty or new folder")
        remove_stale_temporaries(self.dir)
        self._stack = ExitStack()
        self._tmp = self._stack.enter_context(atomic_output(self.dir, what="dataset "))  # renamed by close()
        try:
            (self._tmp / SHARD_DIR).mkdir(parents=True)
            (self._tmp / WRITER_PID).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        except OSError as e:
            self.abort(e)
            raise AnchorfaceError(f"cannot write dataset {self.dir}: {one_line(e)}") from None
        self.data = dict(data)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.shard_bytes = shard_bytes
        self.clips: list[dict] = []
        self.source_kind: str | None = None
        self.global_dim: int | None = None
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shard = 0

    @property
    def _shard_name(self) -> str:
        return f"{SHARD_DIR}/shard-{self._shard:05d}.safetensors"

    def add_clip(self, name: str, latents, landmarks, source_first, source_last, fps: float,
                 source_video: str = "") -> None:
        if "/" in name or any(c["name"] == name for c in self.clips):
            raise ValueError(f"clip name {name!r} contains '/' or is not unique")
        latents = torch.as_tensor(latents).to(torch.float16).contiguous()
        landmarks = torch.as_tensor(np.asarray(landmarks, dtype=np.float32)).contiguous()
        n = latents.shape[0]
        if n < 1 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents of {name}: expected [N, {self.latent_shape}], got {tuple(latents.shape)}")
        if tuple(landmarks.shape) != (n, 478, 3):
            raise ValueError(f"landmarks of {name}: expected [{n}, 478, 3], got {tuple(landmarks.shape)}")
        sources = []
        for src in (source_first, source_last):
            src = torch.as_tensor(np.asarray(src))
            kind = "pixels" if src.dtype == torch.uint8 else "embedding"
            if kind == "pixels":
                res = self.data.get("resolution")
                if tuple(src.shape) != (res, res, 3):
                    raise ValueError(f"source crop of {name}: expected [{res}, {res}, 3] uint8, got {tuple(src.shape)}")
            else:
                if src.ndim != 1:
                    raise ValueError(f"source embedding of {name}: expected [D], got {tuple(src.shape)}")
                src = src.float()
                if self.global_dim not in (None, src.shape[0]):
                    raise ValueError(f"source embedding of {name}: dim {src.shape[0]} != {self.global_dim}")
                self.global_dim = int(src.shape[0])
            if self.source_kind not in (None, kind):
                raise ValueError(f"source of {name} is {kind} but earlier clips stored {self.source_kind}")
            self.source_kind = kind
            sources.append(src.contiguous())
        tensors = {"latents": latents, "landmarks": landmarks, "source_first": sources[0], "source_last": sources[1]}
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self._pending and self._pending_bytes + size > self.shard_bytes:
            self._flush()
        for key, t in tensors.items():
            self._pending[f"{name}/{key}"] = t
        self._pending_bytes += size
        self.clips.append({"name": name, "shard": self._shard_name, "num_frames": int(n), "fps": float(fps),
                           "source_video": str(source_video)})

    def _flush(self) -> None:
        if not self._pending:
            return
        write_safetensors(self._tmp / self._shard_name, self._pending,
                          metadata={"format": FORMAT, "version": str(VERSION)})
        self._pending, self._pending_bytes = {}, 0
        self._shard += 1

    def close(self) -> dict:
        """Flush the last shard, write the index and move the dataset into place; returns the index."""
        try:
            if not self.clips:
                raise AnchorfaceError(f"no clip to write to {self.dir}")
            self._flush()
            index = {"format": FORMAT, "version": VERSION, "data": self.data,
                     "latent_shape": list(self.latent_shape), "source_kind": self.source_kind,
                     "global_dim": self.global_dim, "clips": self.clips}
            write_json(self._tmp / INDEX, index, indent=1)
            (self._tmp / WRITER_PID).unlink(missing_ok=True)
        except BaseException as e:
            self.abort(e)
            raise
        self._stack.close()  # the rename (one-line error, temporary directory removed, if it fails)
        return index

    def abort(self, exc: BaseException | None = None) -> None:
        """Drop what was written; an existing dataset in `dataset_dir` stays as it was."""
        exc = exc or RuntimeError("aborted")
        self._stack.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)


def _writer_gone(folder: Path) -> bool:
    """Whether the process that filled temporary dataset folder `folder` is gone (killed before it finished): its
    pid file names a process of this host that no longer runs, or there is no pid file (written right after the
    folder is made)."""
    try:
        host, pid = (folder / WRITER_PID).read_text().split()
        pid = int(pid)
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    if host != socket.gethostname():
        return False  # (a shared file system: that process may still run elsewhere)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def remove_stale_temporaries(dataset_dir: str | Path) -> list[Path]:
    """Remove the temporary sibling folders (`.NAME.tmp-*`) that an interrupted `prepare` of `dataset_dir` left
    behind (killed with SIGKILL, or power loss: no chance to clean up); returns those removed."""
    import shutil

    dataset_dir = Path(dataset_dir)
    if not dataset_dir.parent.is_dir():
        return []
    stale = [p for p in dataset_dir.parent.glob(f".{dataset_dir.stem}.tmp-*{dataset_dir.suffix}")
             if p.is_dir() and not p.is_symlink() and _writer_gone(p)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def load_index(dataset_dir: str | Path) -> dict:
    """Read and check `DATASET_DIR/index.json`; AnchorfaceError with a one-line reason if it is not a dataset."""
    dataset_dir = Path(dataset_dir)
    path = manifest_in(dataset_dir, INDEX, "dataset", f"a prepared dataset (no {INDEX}; run `anchorface prepare` first)")
    index = read_manifest(path, FORMAT, VERSION, required=("clips", "data", "latent_shape", "source_kind"),
                          what="dataset index")
    if not index["clips"]:
        raise AnchorfaceError(f"{path}: incomplete dataset index (no clips)")
    for shard in sorted({c["shard"] for c in index["clips"]}):
        if not (dataset_dir / shard).exists():
            raise AnchorfaceError(f"{dataset_dir}: shard {shard} listed in the index is missing")
        open_shard(dataset_dir / shard)  # reads the header only: a truncated or corrupt shard fails here, in one line
    return index


def open_shard(path: str | Path):
    """A shard opened with safetensors (memory-mapped); AnchorfaceError when it cannot be read (truncated, corrupt,
    unreadable)."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as e:
        raise AnchorfaceError(f"cannot read dataset shard {path}: truncated or corrupt ({one_line(e)}); run "
                              "`anchorface prepare` again") from None
    except OSError as e:
        raise AnchorfaceError(f"cannot read dataset shard {path}: {one_line(e)}") from None


def check_compatible(index: dict, cfg: Config) -> None:
    """AnchorfaceError if a dataset was prepared with other frozen parts than `cfg` expects."""
    want = data_signature(cfg.data)
    have = {k: index["data"].get(k) for k in want}
    diff = [f"{k}: dataset {have[k]!r} vs config {want[k]!r}" for k in want if have[k] != want[k]]
    if diff:
        raise AnchorfaceError("the dataset was prepared for another data config (" + "; ".join(diff)
                              + "); run `anchorface prepare` with this --config")
    if index["source_kind"] == "embedding" and index.get("global_dim") != cfg.model.global_dim:
        raise AnchorfaceError(f"dataset source embeddings have dim {index.get('global_dim')} but "
                              f"model.global_dim is {cfg.model.global_dim}")


# --------------------------------------------------------------------------------------------------------------
# The training sampler (§3.1)
# --------------------------------------------------------------------------------------------------------------

def furthest_end(first: int, last: int, num_frames: int) -> int:
    """The source frame of a sequence spanning frames [first, last] of a clip of `num_frames` (§3.1, §4.3.1): the
    end of the clip furthest in time from it, i.e. frame 0 if the sequence starts at least as far from it as it ends
    from the last frame, else the last frame (ties -> frame 0)."""
    return 0 if first >= (num_frames - 1) - last else num_frames - 1


def sample_training_example(clip_len: int, T: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """T sorted distinct frame indices of a clip of `clip_len` frames, and the source frame index (§3.1).

    The T frames are a uniformly random T-subset (so the spacing is random and non-uniform). The source is the
    frame "furthest in time from the chosen sequence" (`furthest_end`): the first frame if the sequence starts
    further from it than it ends from the last, else the last (ties -> the first). With clip_len > T the source is
    never one of the T frames: subsets containing both the first and the last frame are redrawn (uniform over the
    other subsets).
    With clip_len == T the sequence is the whole clip and the source is its first frame (the only case where the
    source is also in the sequence). clip_len < T is a ValueError; `ClipDataset` leaves such clips out.
    """
    if clip_len < T:
        raise ValueError(f"a clip of {clip_len} frames cannot give {T} distinct frames")
    if clip_len == T:
        return np.arange(T), 0
    while True:
        frames = np.sort(rng.choice(clip_len, size=T, replace=False))
        if frames[0] > 0 or frames[-1] < clip_len - 1:
            break
    return frames, furthest_end(int(frames[0]), int(frames[-1]), clip_len)


@dataclass(frozen=True)
class Example:
    clip: int  # position in the sampler's clip list
    frames: np.ndarray  # [T] sorted frame indices
    source: int  # frame index of the source (0 or clip_len - 1)
    drop: bool  # joint dropout of all conditions (supp. §4)
    drop_global: bool = False  # G alone dropped (`data.signal_dropout`)
    drop_landmarks: bool = False  # L alone dropped


class SequenceSampler:
    """Training example `k` as a pure function of `(seed, k)` (§3.1, supp. §4): clip uniform over clips, frames
    and source by `sample_training_example`, drop with probability `cond_dropout`, and with `signal_dropout` > 0
    each signal alone with that probability (drawn after the others, so 0 reproduces the paper's examples)."""

    def __init__(self, clip_lengths, num_frames: int, cond_dropout: float, seed: int, signal_dropout: float = 0.0):
        self.clip_lengths = [int(n) for n in clip_lengths]
        if not self.clip_lengths:
            raise ValueError("no clip to sample from")
        self.num_frames, self.cond_dropout, self.seed = int(num_frames), float(cond_dropout), int(seed)
        self.signal_dropout = float(signal_dropout)
        for name, v in (("data.cond_dropout", self.cond_dropout), ("data.signal_dropout", self.signal_dropout)):
            if not 0.0 <= v <= 1.0:
                raise AnchorfaceError(f"{name} must be in [0, 1], got {v}")

    def __call__(self, k: int) -> Example:
        rng = np.random.default_rng([self.seed, int(k)])
        clip = int(rng.integers(len(self.clip_lengths)))
        frames, source = sample_training_example(self.clip_lengths[clip], self.num_frames, rng)
        drop = bool(rng.random() < self.cond_dropout)
        if self.signal_dropout <= 0:
            return Example(clip, frames, source, drop)
        drop_global, drop_landmarks = (bool(u < self.signal_dropout) for u in rng.random(2))
        return Example(clip, frames, source, drop, drop_global, drop_landmarks)


class ShardFiles:
    """Lazily opened, per-process shard handles of a prepared dataset in `self.dir` (memory-mapped with
    safetensors): a DataLoader worker opens its own, and pickling (to start one) carries none."""

    _files: dict | None = None
    _pid: int | None = None

    def _file(self, shard: str):
        if self._pid != os.getpid() or self._files is None:  # a fresh process: open our own handles
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            self._files[shard] = open_shard(self.dir / shard)
        return self._files[shard]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = None, None
        return state


class ClipDataset(ShardFiles, torch.utils.data.Dataset):
    """Training examples read from the shards (memory-mapped with safetensors, opened lazily per process).

    `dataset[k]` is example k of `SequenceSampler` (k is a global sample counter, not bounded by the data size):
    dict(latents float32 [T, C, h, w], landmarks float32 [T, 1434] (`landmark_vector`), weight float32
    [T, 1, h, w] (`expressive_weight_maps`, 1 + lambda_ex on expressive pixels, §4.1), source (float32 [D]
    embedding, or float32 [3, res, res] pixels in [-1, 1]), drop bool tensor, index = k).
    Clips shorter than `num_frames` are left out (counted in `skipped_short`).
    """

    def __init__(self, dataset_dir: str | Path, num_frames: int, cond_dropout: float, lambda_ex: float, seed: int,
                 clip_names: list[str] | None = None, index: dict | None = None, signal_dropout: float = 0.0):
        self.dir = Path(dataset_dir)
        self.index = index if index is not None else load_index(self.dir)
        clips = self.index["clips"]
        if clip_names is not None:
            wanted = set(clip_names)
            clips = [c for c in clips if c["name"] in wanted]
        self.clips = [c for c in clips if c["num_frames"] >= num_frames]
        self.skipped_short = len(clips) - len(self.clips)
        if not self.clips:
            raise AnchorfaceError(f"{self.dir}: no clip has at least {num_frames} frames")
        self.sampler = SequenceSampler([c["num_frames"] for c in self.clips], num_frames, cond_dropout, seed,
                                       signal_dropout)
        self.lambda_ex = float(lambda_ex)
        self.latent_shape = tuple(self.index["latent_shape"])

    def load(self, clip: int, frames, source: int, drop: bool, drop_global: bool = False,
             drop_landmarks: bool = False) -> dict:
        """One example from explicit choices (used by `__getitem__` and for fixed preview examples)."""
        from anchorface.faces.landmarks import expressive_weight_maps, landmark_vector

        c = self.clips[clip]
        f = self._file(c["shard"])
        lat_slice, lmk_slice = f.get_slice(f"{c['name']}/latents"), f.get_slice(f"{c['name']}/landmarks")
        latents = torch.cat([lat_slice[int(i):int(i) + 1] for i in frames]).float()
        lmk = torch.cat([lmk_slice[int(i):int(i) + 1] for i in frames]).float().numpy()
        h = latents.shape[-1]
        weight = torch.from_numpy(expressive_weight_maps(lmk, h, self.lambda_ex))[:, None]
        end = "first" if source == 0 else "last"
        src = f.get_tensor(f"{c['name']}/source_{end}")
        if src.dtype == torch.uint8:
            src = to_pixels(src)
        return {"latents": latents, "landmarks": torch.from_numpy(landmark_vector(lmk)), "weight": weight,
                "source": src.float(), "drop": torch.tensor(bool(drop)), "drop_global": torch.tensor(bool(drop_global)),
                "drop_landmarks": torch.tensor(bool(drop_landmarks))}

    def __getitem__(self, k: int) -> dict:
        ex = self.sampler(k)
        return self.load(ex.clip, ex.frames, ex.source, ex.drop, ex.drop_global, ex.drop_landmarks) | \
            {"index": torch.tensor(int(k))}


class StepSampler(torch.utils.data.Sampler):
    """Global sample indices for one process, from `start_step` on (deterministic, so resume is exact).

    Optimizer step s has `grad_accum` micro-steps; in micro-step m, process r reads `local_batch` examples:
    k = s * G + m * P * L + r * L + j, with G = grad_accum * P * L the global batch.
    """

    def __init__(self, local_batch: int, grad_accum: int, num_processes: int, rank: int, start_step: int = 0,
                 max_steps: int | None = None):
        self.L, self.A, self.P, self.r = local_batch, grad_accum, num_processes, rank
        self.start_step, self.max_steps = start_step, max_steps

    def __iter__(self):
        G = self.A * self.P * self.L
        s = self.start_step
        while self.max_steps is None or s < self.max_steps:
            for m in range(self.A):
                base = s * G + m * self.P * self.L + self.r * self.L
                yield from range(base, base + self.L)
            s += 1

    def __len__(self) -> int:
        if self.max_steps is None:
            raise TypeError("an unbounded StepSampler has no length")
        return max(0, self.max_steps - self.start_step) * self.A * self.L


# --------------------------------------------------------------------------------------------------------------
# `anchorface prepare`
# --------------------------------------------------------------------------------------------------------------

def segment_bounds(num_frames: int, fps: float, max_seconds: float) -> list[tuple[int, int]]:
    """Cut [0, num_frames) into the fewest equal-length segments of at most `max_seconds`."""
    max_len = max(1, int(math.floor(min(max_seconds * fps + 1e-6, num_frames))))  # (min: no overflow at 1e308 s)
    n = max(1, math.ceil(num_frames / max_len))
    edges = np.linspace(0, num_frames, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def face_stretches(found, fps: float, max_faceless_seconds: float = MAX_FACELESS_SECONDS
                   ) -> tuple[list[tuple[int, int]], int, int]:
    """Split frames [0, N) at the stretches without a face (`found` False) longer than `max_faceless_seconds`:
    `(kept ranges, stretches cut, frames cut)`. Shorter gaps stay (their landmarks are filled from the neighbours,
    `faces.track_video`); a range without any face is cut too."""
    found = np.asarray(found, dtype=bool)
    longest = max(0, int(math.floor(max_faceless_seconds * fps + 1e-6)))
    kept, cut, cut_frames, start, i, n = [], 0, 0, 0, 0, len(found)
    while i < n:
        if found[i]:
            i += 1
            continue
        j = i
        while j < n and not found[j]:
            j += 1
        if j - i > longest:
            if i > start:
                kept.append((start, i))
            cut, cut_frames, start = cut + 1, cut_frames + (j - i), j
        i = j
    if start < n:
        kept.append((start, n))
    for a, b in [r for r in kept if not found[r[0]:r[1]].any()]:  # (only possible with no face at all)
        kept.remove((a, b))
        cut, cut_frames = cut + 1, cut_frames + (b - a)
    return kept, cut, cut_frames


@torch.no_grad()
def _encode(codec, crops: np.ndarray, device) -> torch.Tensor:
    out = [codec.encode(to_pixels(crops[i:i + ENCODE_BATCH]).to(device)).float().cpu()
           for i in range(0, len(crops), ENCODE_BATCH)]
    return torch.cat(out).half()


def prepare_video(path: Path, cfg: Config, codec, encoder, max_seconds: float, device="cpu", progress=False,
                  stats: dict | None = None):
    """Face crops, landmarks, latents and source candidates of one video, as a list of segment dicts. Stretches
    without a face longer than `MAX_FACELESS_SECONDS` are cut out (`face_stretches`); `stats`, when given, gets
    their count and frames (`faceless_stretches`, `faceless_frames`). NoFaceError when no face is left."""
    from anchorface.faces.detect import track_video
    from anchorface.io.video import probe_video

    info = probe_video(path)
    track = track_video(path, cfg.data.resolution, keep_crops=True, progress=progress)  # NoFaceError: no face
    crops_arr, lmk, n = track.crops, track.landmarks, len(track.landmarks)
    fps = float(info.fps)
    kept, cut, cut_frames = face_stretches(track.found, fps)
    if stats is not None:
        stats["faceless_stretches"], stats["faceless_frames"] = cut, cut_frames
    if not kept:
        raise NoFaceError(f"no face found in any of the {n} video frames")
    bounds = [(start + a, start + b) for start, stop in kept for a, b in segment_bounds(stop - start, fps, max_seconds)]
    segments = []
    for a, b in bounds:
        ends = crops_arr[[a, b - 1]]
        if encoder is not None:  # frozen global encoder: store the embeddings
            with torch.no_grad():
                emb = encoder.encode_images(to_pixels(ends).to(device)).float().cpu()
            first, last = emb[0], emb[1]
        else:  # jointly trained encoder: store the pixels
            first, last = ends[0], ends[1]
        segments.append({"latents": _encode(codec, crops_arr[a:b], device), "landmarks": lmk[a:b],
                         "source_first": first, "source_last": last, "fps": fps})
    return segments


def prepare_dataset(videos_dir: str | Path, dataset_dir: str | Path, cfg: Config,
                    max_seconds: float = DEFAULT_MAX_SECONDS, overwrite: bool = False, device: str = "cpu",
                    progress: bool = True) -> dict:
    """`anchorface prepare`: every video of `videos_dir` -> clips in `dataset_dir` (format in the module doc).

    Returns a summary dict(videos, clips, frames, skipped_no_face, skipped_unreadable, skipped_faceless_stretches,
    skipped_faceless_frames): videos without a face or unreadable are skipped whole; stretches without a face
    longer than `MAX_FACELESS_SECONDS` are cut out of the others. Each skip is an `AnchorfaceWarning` (one line).
    """
    from anchorface.frozen.codecs import load_codec
    from anchorface.frozen.encoders import load_clip
    from anchorface.io.video import list_videos

    if not max_seconds > 0:
        raise AnchorfaceError(f"--max-seconds must be positive, got {max_seconds}")
    if not Path(videos_dir).is_dir():
        raise AnchorfaceError(f"videos directory not found: {videos_dir}")
    videos = list_videos(videos_dir)
    codec = load_codec(cfg.data).to(device).eval()
    encoder = None
    if cfg.data.encoder == "clip":
        encoder = load_clip(cfg.data, cfg.model.global_dim).to(device).eval()
    elif cfg.data.encoder != "learned":
        raise AnchorfaceError(f"unknown global encoder {cfg.data.encoder!r} (expected 'clip' or 'learned')")
    signature = data_signature(cfg.data) | {"codec_config": codec.config}
    stems = [p.stem for p in videos]  # clip names: "<stem>-<segment>", "<stem>_<ext>-<segment>" if stems clash
    names = {p: p.stem if stems.count(p.stem) == 1 else p.name.replace(".", "_") for p in videos}
    summary = {"videos": len(videos), "clips": 0, "frames": 0, "skipped_no_face": 0, "skipped_unreadable": 0,
               "skipped_faceless_stretches": 0, "skipped_faceless_frames": 0}
    with DatasetWriter(dataset_dir, signature, codec.latent_shape(cfg.data.resolution), overwrite=overwrite) as w:
        bar = tqdm(videos, desc="prepare", unit="video", disable=not progress)
        for path in bar:
            bar.set_postfix_str(path.name)
            stats: dict = {}
            try:
                segments = prepare_video(path, cfg, codec, encoder, max_seconds, device, stats=stats)
            except NoFaceError as e:
                summary["skipped_no_face"] += 1
                warnings.warn(f"skipping {path.name}: {e}", AnchorfaceWarning, stacklevel=2)
                continue
            except VideoError as e:
                summary["skipped_unreadable"] += 1
                warnings.warn(f"skipping {path.name}: {e}", AnchorfaceWarning, stacklevel=2)
                continue
            if stats.get("faceless_stretches"):
                summary["skipped_faceless_stretches"] += stats["faceless_stretches"]
                summary["skipped_faceless_frames"] += stats["faceless_frames"]
                warnings.warn(f"{path.name}: cut out {stats['faceless_stretches']} stretch(es) without a face "
                              f"({stats['faceless_frames']} frames)", AnchorfaceWarning, stacklevel=2)
            for i, seg in enumerate(segments):
                w.add_clip(f"{names[path]}-{i:03d}", seg["latents"], seg["landmarks"], seg["source_first"], seg["source_last"],
                           seg["fps"], source_video=path.name)
                summary["clips"] += 1
                summary["frames"] += len(seg["latents"])
        if not w.clips:
            raise AnchorfaceError(f"no usable video in {videos_dir}: {summary['skipped_no_face']} without a face, "
                                  f"{summary['skipped_unreadable']} unreadable")
    return summary
