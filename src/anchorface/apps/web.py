"""`anchorface web`: a browser UI over the same video flow as `anchorface reenact` (`methods.flow.reenact`).

Upload a face photo and a driving video (or record them with the webcam), choose the checkpoint, the method (the
registry's), the merge strategy (Fig. 3), sampler, steps and seed, and get the reenacted video, the side-by-side
comparison driving | anchored | multidiffusion (`reenact --compare`) and both files to download. The progress bar
follows the pipeline's own progress bars (face boxes, landmarks, denoising, writing), and the cancel button stops
the job at its next progress step (a queued job as it starts); outputs are written atomically, so a cancelled or
failed job leaves no file.
Errors are the CLI's one-line messages, shown in the status line (uploads named by their file names, not the
server's copies); the page never shows a traceback. It binds to 127.0.0.1 unless told otherwise (`--host`, `--share`).

gradio (the `web` extra) is imported here only, when the command runs (tests/test_layout.py).
"""

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from anchorface.apps.arguments import int_range
from anchorface.errors import AnchorfaceError, io_errors, one_line, require

DEMO_CHOICE = "demo"  # the checkpoint field's value for the committed demo model
MAX_STEPS = 100  # the steps slider's upper end (check_sampling bounds steps by the checkpoint's T)
CANCEL_WAIT_S = 30.0  # how long Cancel waits for the job to stop (then the page keeps what the job will say)


class Cancelled(AnchorfaceError):
    """The user pressed Cancel: raised at the job's next progress step."""


class Job:
    """One reenactment of a browser session, from its click (queued) to its end: its cancel flag, the gradio
    progress bar that the pipeline's tqdm bars feed (`follow_progress`), and the status line it ended with."""

    def __init__(self, progress=None):
        self.cancel = threading.Event()
        self.progress = progress
        self.started = False
        self.status: str | None = None  # the job's last word for the status line ("Done: …", "Error: …", ...)
        self.finished = threading.Event()

    def finish(self) -> None:
        """The job has ended, with `status` set."""
        self.finished.set()

    def step(self, bar, check: bool = True) -> None:
        """Called on every update of a pipeline progress bar (and when it closes, `check=False`): stop if cancelled,
        else show it."""
        if check and self.cancel.is_set():
            raise Cancelled("cancelled")
        if self.progress is not None:
            total = int(bar.total) if bar.total else None
            self.progress((int(bar.n), total), desc=bar.desc or "working", unit=bar.unit or "steps")


class Sessions:
    """The jobs of each browser session, queued or running. Cancel stops them all and answers with the last one's
    own status line once they have ended ("Cancelled.", or "Done: …" when it finished first): whichever of the two
    answers reaches the page last, the page ends on the job's word, never on a stale "Cancelling…" (a race CI
    hit). A job still queued is cancelled at once. With nothing to cancel, or a job that takes longer than
    `CANCEL_WAIT_S` to stop, it answers None: the page keeps what the job will say."""

    def __init__(self):
        self._jobs: dict[str, list[Job]] = {}
        self._closed: set[str] = set()  # sessions whose tab was closed: a job of theirs still queued does not run
        self._lock = threading.Lock()

    def _keep_running(self, session: str, *add: Job) -> None:
        """The session's jobs become its running ones (queued jobs dropped) plus `add`. Under the lock."""
        jobs = [j for j in self._jobs.get(session, []) if j.started and not j.finished.is_set()] + list(add)
        if jobs:
            self._jobs[session] = jobs
        else:
            self._jobs.pop(session, None)

    def submit(self, session: str) -> None:
        """A click on Reenact: the job is queued (it may wait for another session's job to end). It replaces the
        session's queued jobs: a click whose run the page skipped (one was pending) or that gradio refused before
        running leaves one that will never start, and the next run must not inherit it (nor its Cancel)."""
        with self._lock:
            self._keep_running(session, Job())

    def start(self, session: str, progress=None) -> Job:
        """The session's oldest queued job, now running (gradio runs a session's events in order)."""
        with self._lock:
            queued = [j for j in self._jobs.setdefault(session, []) if not j.started]
            job = queued[0] if queued else Job()
            if not queued:
                self._jobs[session].append(job)
            job.started, job.progress = True, progress
            if session in self._closed:
                job.cancel.set()
            return job

    def close(self, session: str) -> None:
        """The session's tab was closed (or reloaded): its jobs are cancelled, running or queued, so that nobody's
        abandoned job holds the one model slot."""
        with self._lock:
            self._closed.add(session)
            for job in self._jobs.get(session, []):
                job.cancel.set()
            self._keep_running(session)

    def end(self, session: str, job: Job) -> None:
        """`job` has ended. The session's queued jobs go with it: the page runs one job of a session at a time and
        skips clicks meanwhile, so a job still queued now is a click whose run never comes."""
        with self._lock:
            job.finish()
            self._keep_running(session)

    async def cancel(self, session: str, timeout: float = CANCEL_WAIT_S) -> str | None:
        """Cancel the session's jobs and wait (without holding a thread) for the running ones to end: the last
        one's status. A queued job is only flagged (it says "Cancelled." itself when dequeued): "Cancelled." at once."""
        with self._lock:  # (flagged under the lock: a queued job cannot start unflagged meanwhile)
            jobs = list(self._jobs.get(session, []))
            running = [j for j in jobs if j.started]
            for job in jobs:
                job.cancel.set()
        deadline = time.monotonic() + timeout
        while running and not all(j.finished.is_set() for j in running):
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        if running:
            return running[-1].status
        return "Cancelled." if jobs else None  # (a queued job: it will not run, and says the same when dequeued)


_follow_lock = threading.Lock()


@contextmanager
def follow_progress(job: Job):
    """While inside, every tqdm bar's `update` and `close` in this thread (the bars the flow, the face tracker and
    the sampler already show with progress=True; iterating a bar updates it at most every 0.1 s) also call
    `job.step(bar)`; other threads' bars (another handler loading a model) are not the job's. One job at a time."""
    from tqdm import std

    with _follow_lock:
        update, close, owner = std.tqdm.update, std.tqdm.close, threading.get_ident()

        def followed_update(bar, n=1):
            out = update(bar, n)
            if threading.get_ident() == owner:
                job.step(bar)
            return out

        def followed_close(bar):  # (a short loop may end before its first update: show it full)
            if not bar.disable and threading.get_ident() == owner:
                job.step(bar, check=False)
            return close(bar)

        std.tqdm.update, std.tqdm.close = followed_update, followed_close
        try:
            yield job
        finally:
            std.tqdm.update, std.tqdm.close = update, close


def _whole(value, what: str) -> int:
    """An integer from a form field (gradio sends numbers as floats): 3.0 is 3, 2.7 / inf / nan / text are a
    one-line error rather than silently truncated."""
    try:
        number = float(value)
        if number != int(number):
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise AnchorfaceError(f"{what} must be a whole number, got {value!r}") from None


def uploaded_names(message: str, *uploads) -> str:
    """`message` with the server's copies of the uploads (gradio's cache paths) named by their file names."""
    for path in uploads:
        if path:
            message = message.replace(str(path), Path(path).name)
    return message


def markdown_text(text: str) -> str:
    """`text` shown as it is in the Markdown status line (a path's `*`, `_` or `<` are not formatting)."""
    return "".join("\\" + c if c in "\\`*_[]<>#|" else c for c in text)


class Runner:
    """Runs one job of the UI: validates the fields, loads the method (the last one stays loaded), and calls the
    shared flow into a fresh folder under `workdir`. Raises AnchorfaceError (one line) for anything the user can fix."""

    def __init__(self, workdir: str | Path, device: str = "cpu"):
        self.workdir, self.device = Path(workdir), device
        self._loaded: tuple[tuple, object] | None = None
        self._loading = threading.Lock()  # (a control's change and a job may ask for a model at once: load it once)
        self._jobs = 0

    @staticmethod
    def checkpoint_path(choice: str | None) -> Path:
        from anchorface.apps.reenact import demo_checkpoint

        text = (choice or "").strip()
        if text in ("", DEMO_CHOICE):
            path = demo_checkpoint()
            if not (path / "anchorface.json").exists():
                raise AnchorfaceError("no demo checkpoint installed; enter a checkpoint folder")
            return path
        path = Path(text).expanduser()
        if path.exists() and not path.is_dir():
            raise AnchorfaceError(f"checkpoint {path} is a file; give its folder")
        if not path.is_dir():
            raise AnchorfaceError(f"checkpoint folder {path} does not exist")
        return path

    def method(self, name: str, checkpoint: str | None):
        from anchorface.methods.registry import get_method

        spec = get_method(name)
        path = self.checkpoint_path(checkpoint) if spec.needs_checkpoint else None
        key = (name, str(path), self.device)
        with self._loading:
            if self._loaded is None or self._loaded[0] != key:
                self._loaded = None  # (free the previous model first)
                self._loaded = (key, spec.from_pretrained(path, device=self.device))
            return self._loaded[1]

    def options(self, name: str, checkpoint: str | None) -> tuple[tuple[str, ...], dict]:
        """(the options method `name` takes, their defaults for this checkpoint), loading the model (the run
        reuses it); none for a baseline."""
        from anchorface.methods.registry import get_method

        if not get_method(name).needs_checkpoint:
            return (), {}
        model = self.method(name, checkpoint)
        return tuple(model.OPTIONS), model.resolve_options({})

    def run(self, photo, video, *, checkpoint=None, method="anchored", merge=None, sampler=None, steps=None,
            seed=0, compare=True, job: Job | None = None) -> dict:
        """Reenact `photo` with `video`; returns {"output", "compare" (or None), "message"}."""
        from anchorface.apps.arguments import SEED_MAX
        from anchorface.methods.flow import check_inputs, reenact

        if not photo:
            raise AnchorfaceError("upload a face photo (or take one with the webcam)")
        if not video:
            raise AnchorfaceError("upload a driving video (or record one with the webcam)")
        exact = not isinstance(seed, float) or abs(seed) <= 2 ** 53  # (the page sends numbers as floats)
        seed = _whole(seed, "the seed")
        if not 0 <= seed <= SEED_MAX:
            raise AnchorfaceError(f"the seed must be in 0..{SEED_MAX}, got {seed}")
        if not exact:
            raise AnchorfaceError(f"the seed must be at most {2 ** 53} here (a larger number loses digits on its way "
                                  "from the browser)")
        steps = None if steps is None else _whole(steps, "steps")
        for old in self.workdir.glob("job-*"):  # (gradio copied the earlier results into its cache when it sent them)
            shutil.rmtree(old, ignore_errors=True)
        self._jobs += 1
        folder = self.workdir / f"job-{self._jobs:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        output = folder / "reenacted.mp4"
        compare_path = folder / "compare.mp4" if compare else None
        check_inputs(photo, video, output, compare_path)  # before loading any weights
        job = job or Job()
        with follow_progress(job):
            model = self.method(method, checkpoint)
            given = {"merge": merge, "sampler": sampler, "steps": steps}
            options = {k: v for k, v in given.items() if v not in (None, "") and k in getattr(model, "OPTIONS", ())}
            result = reenact(model, photo, video, output, seed=seed, compare_path=compare_path, progress=True,
                             **options)
        missing = f", {result.frames_without_face} frames without a face filled" if result.frames_without_face else ""
        message = (f"{result.num_frames} frames at {float(result.fps):g} fps, {result.method}: {result.summary}"
                   f"{missing} ({result.seconds:.1f} s)")
        return {"output": result.output, "compare": result.compare, "message": message}


def build_app(checkpoint: str | None = None, device: str = "cpu", workdir: str | Path | None = None):
    """The gradio Blocks of the UI (not launched)."""
    gr = require("gradio", "web", "anchorface web")
    from anchorface.methods.anchored.checkpoint import read_config
    from anchorface.methods.anchored.options import MERGES, SAMPLERS
    from anchorface.methods.registry import get_method, method_names

    runner = Runner(workdir or tempfile.mkdtemp(prefix="anchorface-web-"), device=device)
    sample = read_config(runner.checkpoint_path(checkpoint)).sample  # the defaults shown; a bad --checkpoint: error
    sessions = Sessions()

    def submit(request: gr.Request):
        sessions.submit(request.session_hash)

    def reenact_job(photo, video, ckpt, method, merge, sampler, steps, seed, compare, request: gr.Request,
            progress=gr.Progress()):  # noqa: B008  (how gradio marks the progress parameter)
        job, out = sessions.start(request.session_hash, progress), None
        said = lambda e: markdown_text(uploaded_names(one_line(e), photo, video))  # noqa: E731
        try:
            if job.cancel.is_set():  # (cancelled while queued)
                raise Cancelled("cancelled")
            compare = bool(compare) and get_method(method).needs_checkpoint  # (its checkbox is off for a baseline)
            out = runner.run(photo, video, checkpoint=ckpt, method=method, merge=merge, sampler=sampler, steps=steps,
                             seed=seed, compare=compare, job=job)
            job.status = f"Done: {out['message']}"
        except Cancelled:
            job.status = "Cancelled."
        except (AnchorfaceError, *io_errors()) as e:  # the reason stays in the status line (a toast goes away)
            job.status = f"Error: {said(e)}"
        except Exception as e:  # a bug: one line in the page, the traceback on the server's console only
            traceback.print_exc()
            job.status = f"Internal error: {said(e)} (details on the server console)"
        finally:
            sessions.end(request.session_hash, job)
        if out is None:
            return None, None, None, job.status
        files = [str(p) for p in (out["output"], out["compare"]) if p is not None]
        return str(out["output"]), out["compare"] and str(out["compare"]), files, job.status

    def closed(request: gr.Request):
        sessions.close(request.session_hash)

    async def cancel(request: gr.Request):
        status = await sessions.cancel(request.session_hash)
        return status if status is not None else gr.update()

    def model_changed(name, ckpt, show_defaults: bool):
        """The controls of the method (and checkpoint) chosen: those it takes, the steps slider long enough for its
        default; with `show_defaults` (a new method) set to its defaults too. A new checkpoint leaves the values as
        the user set them (an update arriving after the user's next edit would silently undo it)."""
        unchanged = [gr.update() for _ in range(5)]
        try:
            spec = get_method(name)
        except AnchorfaceError:
            return unchanged
        try:
            takes, defaults = runner.options(name, ckpt)
        except (AnchorfaceError, *io_errors()):  # e.g. a folder being typed: values unchanged (Reenact says what is
            # wrong), but the controls the method takes stay usable (the checkpoint field above all)
            try:
                takes, defaults = tuple(getattr(spec.load(), "OPTIONS", ())) if spec.needs_checkpoint else (), {}
            except AnchorfaceError:  # (its module cannot be imported: Reenact will say so)
                return unchanged
        shown = {key: {"value": defaults[key]} if show_defaults and key in defaults else {}
                 for key in ("merge", "sampler", "steps")}
        if defaults.get("steps") is not None:
            shown["steps"]["maximum"] = max(MAX_STEPS, defaults["steps"])
        model = spec.needs_checkpoint  # a model, not a baseline: a checkpoint and the comparison video
        return [gr.update(interactive=model), *(gr.update(interactive=key in takes, **shown[key])
                                                for key in ("merge", "sampler", "steps")), gr.update(interactive=model)]

    with gr.Blocks(title="anchorface", analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        gr.Markdown("# anchorface\nAnimate a face photo with the motion of a driving video (Anchored Diffusion).")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(label="face photo", type="filepath", sources=["upload", "webcam", "clipboard"],
                                 elem_id="photo", height=300)
                video = gr.Video(label="driving video", sources=["upload", "webcam"], elem_id="driving", height=340)
                with gr.Row():
                    ckpt = gr.Dropdown([(f"demo model ({DEMO_CHOICE})", DEMO_CHOICE)],
                                       value=checkpoint or DEMO_CHOICE, allow_custom_value=True,
                                       label="checkpoint", info="the demo model, or a local checkpoint folder",
                                       elem_id="checkpoint")
                    method = gr.Dropdown(list(method_names()), value="anchored", label="method", elem_id="method")
                with gr.Row():
                    merge = gr.Dropdown(list(MERGES), value=sample.merge, label="merge strategy", elem_id="merge")
                    sampler = gr.Dropdown(list(SAMPLERS), value=sample.sampler, label="sampler", elem_id="sampler")
                with gr.Row():
                    steps = gr.Slider(1, max(MAX_STEPS, sample.steps), value=sample.steps, step=1, label="steps",
                                      elem_id="steps")
                    seed = gr.Number(0, label="seed", elem_id="seed")  # (Runner.run checks it: 2.7 is no seed)
                compare = gr.Checkbox(True, label="comparison video (driving | anchored | multidiffusion)",
                                      elem_id="compare")
                with gr.Row():
                    go = gr.Button("Reenact", variant="primary", elem_id="run")
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column():
                status = gr.Markdown("", elem_id="status")
                result = gr.Video(label="result", interactive=False, elem_id="result", height=280)
                comparison = gr.Video(label="comparison", interactive=False, elem_id="comparison", height=280)
                files = gr.File(label="download", file_count="multiple", interactive=False, elem_id="download")
        controls = [ckpt, merge, sampler, steps, compare]
        # the job and the handlers that load a model for the controls take turns (one model in memory at a time;
        # a control changed during a job updates when it ends)
        model_turns = dict(concurrency_limit=1, concurrency_id="model")
        method.change(lambda name, ck: model_changed(name, ck, True), [method, ckpt], controls, **model_turns)
        ckpt.change(lambda name, ck: model_changed(name, ck, False), [method, ckpt], controls, **model_turns)
        go.click(submit, None, None, queue=False).then(
            reenact_job, [photo, video, ckpt, method, merge, sampler, steps, seed, compare],
            [result, comparison, files, status], **model_turns)
        stop.click(cancel, None, status, queue=False)
        app.unload(closed)
        app.queue(default_concurrency_limit=1)
    return app


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "web", help="a web UI in the browser (needs the 'web' extra)",
        description="Start the web UI: upload (or record) a face photo and a driving video, choose checkpoint, "
                    "method, merge strategy, sampler, steps and seed, and get the video and the comparison. "
                    "Binds to 127.0.0.1 unless --host is given.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_range(1, 65535, name="a port in 1..65535"), default=7860,
                   help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--checkpoint", help="the checkpoint selected at start (default: the installed demo model)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from anchorface.devices import resolve_device

    require("gradio", "web", "anchorface web")  # before anything else: the one-line hint when it is missing
    workdir = tempfile.mkdtemp(prefix="anchorface-web-")
    try:
        app = build_app(args.checkpoint, device=str(resolve_device(args.device)), workdir=workdir)
        print(f"anchorface web: http://{args.host}:{args.port} (Ctrl-C to stop)", file=sys.stderr)
        app.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=False, quiet=True,
                   inbrowser=False, ssr_mode=False, footer_links=[])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
