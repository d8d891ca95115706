"""Curation of a folder of raw videos at scale: one task per video, on Ray or serially (§3.3). The only module that
imports ray.

    OUT_DIR/videos/<key>.json   one per finished video (its record, `curation.pipeline.curate_video`), written
                                atomically by the task itself: the unit of resumption
    OUT_DIR/clips/<key>-NNN.mp4 the accepted segments (with --write-clips)
    OUT_DIR/manifest.json       all records in the order of their relative paths, written atomically last

Resumable: a re-run (after a crash or `kill -9`) skips every video whose record exists with the same settings,
redoes the others (their old clips removed first), and so ends with the manifest an uninterrupted run gives; no
partial file is ever taken for a finished one (temporary files start with "." and are swept at the start).
One run at a time per OUT_DIR (a lock file). Serial (`workers=1`, or Ray not installed) and Ray runs execute the
same `process_video`, so their manifests are identical.

Cluster: `ray_address` joins an existing cluster (`ray start --head` ...); RAW_DIR and OUT_DIR must then be paths
every node sees (shared storage), since each task reads its video and writes its own record and clips. Task
arguments are a path and the settings (bytes); nothing large goes through Ray's object store.
"""

from __future__ import annotations

import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from anchorface.curation.pipeline import CLIPS_DIR, CurateOptions, curate_video
from anchorface.errors import AnchorfaceError
from anchorface.io.video import VIDEO_SUFFIXES

FORMAT, VERSION = "anchorface-curation", 1
RESULTS_DIR = "videos"
MANIFEST = "manifest.json"
LOCK = ".curate.lock"
OBJECT_STORE_BYTES = 200 * 2**20  # local Ray: tasks pass paths, not frames


# ------------------------------------------------------------------------------------------------ files and keys
def list_raw_videos(raw_dir: str | Path) -> list[tuple[str, Path]]:
    """(relative path, path) of every file under `raw_dir` with a video suffix, sorted by relative path."""
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise AnchorfaceError(f"raw video folder not found: {raw}")
    found = [(p.relative_to(raw).as_posix(), p) for p in raw.rglob("*")
             if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")]
    if not found:
        raise AnchorfaceError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {raw}")
    return sorted(found)


def video_keys(rels: list[str]) -> dict[str, str]:
    """A file-name-safe unique key per relative path: `a/b c.mp4` -> `a__b_c_mp4` (a hash suffix on a clash)."""
    import hashlib

    keys = {r: re.sub(r"[^A-Za-z0-9_-]", "_", r.replace("/", "__")) for r in rels}
    counts: dict[str, int] = {}
    for k in keys.values():
        counts[k] = counts.get(k, 0) + 1
    return {r: k if counts[k] == 1 else f"{k}-{hashlib.sha1(r.encode()).hexdigest()[:8]}" for r, k in keys.items()}


def write_json_atomic(path: Path, obj) -> None:
    """JSON to `path`, atomically (`io.atomic`): a killed run leaves the old file or the new one, never half."""
    from anchorface.io.atomic import write_text

    write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False))


def read_record(path: Path, params: dict) -> dict | None:
    """A finished video's record, or None when absent, unreadable or made with other settings."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("params") == params else None


@contextmanager
def _locked(out: Path):
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise AnchorfaceError(f"another curation run is writing to {out}") from None
        yield


def _sweep(out: Path) -> None:
    """Remove temporary files a killed run left behind (names starting with '.' and holding '.tmp-')."""
    for d in (out / RESULTS_DIR, out / CLIPS_DIR):
        if d.is_dir():
            for p in d.iterdir():
                if p.name.startswith(".") and ".tmp-" in p.name:
                    p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------ the task
def process_video(path: str, rel: str, key: str, out_dir: str, opts: CurateOptions) -> dict:
    """The task: curate one video, write its record atomically (after its clips), return the record.
    An unexpected error is returned as a `failed` record and not written, so that a re-run retries the video."""
    out = Path(out_dir)
    for old in (out / CLIPS_DIR).glob(f"{key}-[0-9][0-9][0-9].mp4"):  # a half-finished earlier attempt
        old.unlink(missing_ok=True)
    try:
        rec = curate_video(path, key, out, opts)
    except Exception as e:  # a bug or an environment problem: report it, do not mark the video as done
        msg = (str(e).splitlines() or [""])[0]
        return {"video": rel, "key": key, "status": "failed", "reason": f"{type(e).__name__}: {msg}",
                "segments": [], "params": opts.params()}
    rec = {"video": rel, **rec, "params": opts.params()}
    write_json_atomic(out / RESULTS_DIR / f"{key}.json", rec)
    return rec


def _serial(todo, out: Path, opts: CurateOptions, on_done) -> None:
    for path, rel, key in todo:
        on_done(process_video(str(path), rel, key, str(out), opts))


def _on_ray(todo, out: Path, opts: CurateOptions, workers: int | None, address: str | None, on_done) -> None:
    import ray

    started = not ray.is_initialized()
    if started:
        kwargs: dict = {"address": address} if address else {
            "num_cpus": workers or os.cpu_count() or 1, "object_store_memory": OBJECT_STORE_BYTES,
            "include_dashboard": False, "_node_ip_address": "127.0.0.1"}  # a local cluster stays on loopback
        ray.init(log_to_driver=False, configure_logging=False, **kwargs)
    try:
        task = ray.remote(num_cpus=1, max_retries=2)(process_video)
        limit = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))  # bounded in flight: flat driver memory
        pending, queue, which = [], list(todo), {}
        while queue or pending:
            while queue and len(pending) < limit:
                path, rel, key = queue.pop(0)
                ref = task.remote(str(path), rel, key, str(out), opts)
                pending.append(ref)
                which[ref] = (rel, key)
            done, pending = ray.wait(pending, num_returns=1)
            rel, key = which.pop(done[0])
            try:
                rec = ray.get(done[0])
            except Exception as e:  # the worker died (out of memory, node lost) after its retries
                msg = (str(e).strip().splitlines() or [""])[-1]
                rec = {"video": rel, "key": key, "status": "failed", "reason": f"{type(e).__name__}: {msg}",
                       "segments": [], "params": opts.params()}
            on_done(rec)
    finally:
        if started:
            ray.shutdown()


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------------------- a run
def run_curation(raw_dir: str | Path, out_dir: str | Path, opts: CurateOptions, workers: int | None = None,
                 ray_address: str | None = None, progress: bool = True) -> dict:
    """Curate every video under `raw_dir` into `out_dir` (module doc); returns the manifest."""
    from tqdm.auto import tqdm

    opts.check()
    if workers is not None and workers < 1:
        raise AnchorfaceError(f"--workers must be >= 1, got {workers}")
    from anchorface.curation.scenes import _scenedetect, check_opencv

    check_opencv()
    _scenedetect()
    raw, out = Path(raw_dir), Path(out_dir)
    videos = list_raw_videos(raw)
    keys = video_keys([r for r, _ in videos])
    params = opts.params()
    serial = (workers == 1 and ray_address is None) or not ray_available()
    if not serial and ray_address is None and workers is None and (os.cpu_count() or 1) == 1:
        serial = True
    if not ray_available() and (ray_address or (workers or 0) > 1):
        print("anchorface: warning: ray is not installed (pip install 'anchorface[curate]'); running serially",
              file=sys.stderr)
    with _locked(out):
        _sweep(out)
        records: dict[str, dict] = {}
        todo = []
        for rel, path in videos:
            rec = read_record(out / RESULTS_DIR / f"{keys[rel]}.json", params)
            if rec is not None and rec.get("video") == rel:
                records[rel] = rec
            else:
                todo.append((path, rel, keys[rel]))
        bar = tqdm(total=len(videos), initial=len(records), desc="curate", unit="video", disable=not progress)
        counts = {"segments": sum(len([s for s in r["segments"] if s["accepted"]]) for r in records.values())}

        def on_done(rec: dict) -> None:
            records[rec["video"]] = rec
            counts["segments"] += sum(s["accepted"] for s in rec["segments"])
            bar.set_postfix_str(f"{counts['segments']} segments kept; last {rec['video']}: {rec['status']}")
            bar.update()

        try:
            if todo:
                if serial:
                    _serial(todo, out, opts, on_done)
                else:
                    _on_ray(todo, out, opts, workers, ray_address, on_done)
        finally:
            bar.close()
        manifest = build_manifest(records, params, raw)
        write_json_atomic(out / MANIFEST, manifest)
        _prune_clips(out, manifest)
    return manifest


def build_manifest(records: dict[str, dict], params: dict, raw_dir: Path) -> dict:
    """The run's manifest: records sorted by relative path (deterministic), the settings once, a summary."""
    videos = [{k: v for k, v in records[rel].items() if k != "params"} for rel in sorted(records)]
    segs = [s for v in videos for s in v["segments"]]
    reasons: dict[str, int] = {}
    for v in videos:
        if v["status"] != "curated":
            r = re.sub(r"[:(].*", "", v["reason"] or "").strip()
            reasons[r] = reasons.get(r, 0) + 1
    summary = {"videos": len(videos), "videos_curated": sum(v["status"] == "curated" for v in videos),
               "videos_failed": sum(v["status"] == "failed" for v in videos),
               "segments": len(segs), "segments_accepted": sum(s["accepted"] for s in segs),
               "seconds_accepted": round(sum(s["duration"] for s in segs if s["accepted"]), 3),
               "video_rejections": dict(sorted(reasons.items()))}
    return {"format": FORMAT, "version": VERSION, "raw_dir": str(Path(raw_dir).resolve()), "params": params,
            "summary": summary, "videos": videos}


def _prune_clips(out: Path, manifest: dict) -> None:
    """clips/ holds exactly the manifest's accepted clips (no leftovers of older runs or settings)."""
    d = out / CLIPS_DIR
    if not d.is_dir():
        return
    keep = {Path(s["clip"]).name for v in manifest["videos"] for s in v["segments"] if s.get("clip")}
    for p in d.iterdir():
        if p.suffix == ".mp4" and p.name not in keep:
            p.unlink(missing_ok=True)


def load_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise AnchorfaceError(f"{out_dir} is not a curated folder (no {MANIFEST}; run `anchorface curate`)") from None
    except (OSError, ValueError) as e:
        raise AnchorfaceError(f"cannot read {path}: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise AnchorfaceError(f"{path} is not an {FORMAT} manifest")
    return m
