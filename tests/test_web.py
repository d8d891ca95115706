"""`anchorface web`: the job runner (progress from the pipeline's bars, cancel, one-line errors) and the whole UI in
a real headless Chromium: upload a photo and a real driving clip, a bad checkpoint (one-line error), a cancelled job,
then a tiny job with the demo model whose videos play in the page and decode to every frame."""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from anchorface.apps import web
from anchorface.apps.cli import main
from anchorface.errors import AnchorfaceError
from anchorface.io.video import iter_frames, probe_video
from anchorface.methods.anchored.checkpoint import read_config
from helpers import short_clip

SRC = Path(__file__).resolve().parents[1] / "src"
CLIP_FRAMES = 20  # the first 0.8 s of d20 (480x480, 25 fps, with audio)
SCREENSHOT_ENV = "ANCHORFACE_WEB_SCREENSHOT"  # set to a .png path: the browser test saves the page after its run


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="module")
def driving(tmp_path_factory, face_corpus):
    """A short real driving clip: the first frames of d20 with its audio (built in tmp, never committed). For the
    committed screenshot (SCREENSHOT_ENV set) a synthetic clip of the astronaut instead (`anchorface demo`'s kind):
    no frame of the corpus may land in the repository."""
    if os.environ.get(SCREENSHOT_ENV):
        from anchorface.data.synthetic import astronaut, head_and_shoulders, random_motion, write_pseudo_clip

        out = tmp_path_factory.mktemp("clip") / "synthetic.mp4"
        image, geo = head_and_shoulders(astronaut())
        write_pseudo_clip(out, image, geo, random_motion(CLIP_FRAMES, 9_000_001))
        return out
    src = face_corpus / "driving/d20.mp4"
    out = tmp_path_factory.mktemp("clip") / "d20_short.mp4"
    return short_clip(src, out, CLIP_FRAMES)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """scikit-image's astronaut, framed as the demo model's training portrait."""
    from anchorface.data.synthetic import astronaut, head_and_shoulders
    from anchorface.io.images import save_image

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    save_image(path, head_and_shoulders(astronaut())[0])
    return path


def test_web_without_gradio_is_one_line(monkeypatch, capsys):
    for mod in [m for m in sys.modules if m == "gradio" or m.startswith("gradio.")] or ["gradio"]:
        monkeypatch.setitem(sys.modules, mod, None)  # as if not installed
    assert main(["web", "--port", "7999"]) == 1
    assert capsys.readouterr().err == ("anchorface: error: anchorface web needs the 'web' extra: "
                                       "pip install 'anchorface[web]'\n")


class Recorder:
    """A stand-in for gr.Progress: records every (n, total, desc) it is shown."""

    def __init__(self):
        self.calls = []

    def __call__(self, progress, desc=None, unit="steps"):
        self.calls.append((*progress, desc))


def test_runner_progress_follows_the_pipeline_bars(tiny_checkpoint, driving, face_corpus, tmp_path):
    from tqdm import std

    original = std.tqdm.update
    runner, rec = web.Runner(tmp_path / "work"), Recorder()
    out = runner.run(face_corpus / "source/s1.jpg", driving, checkpoint=str(tiny_checkpoint), steps=2,
                     compare=True, job=web.Job(rec))
    assert std.tqdm.update is original  # the hook is gone after the job
    assert probe_video(out["output"]).num_frames == probe_video(out["compare"]).num_frames == CLIP_FRAMES
    descs = {d for _, _, d in rec.calls}
    assert {"face boxes", "landmarks", "denoising", "writing"} <= descs
    assert (CLIP_FRAMES, CLIP_FRAMES, "writing") == rec.calls[-1]  # the last bar ends full
    assert all(t is None or 0 <= n <= t for n, t, _ in rec.calls)
    assert f"{CLIP_FRAMES} frames" in out["message"]


def test_runner_cancel_stops_at_the_next_step_and_leaves_no_file(tiny_checkpoint, driving, face_corpus, tmp_path):
    job = web.Job()
    job.cancel.set()
    with pytest.raises(web.Cancelled):
        web.Runner(tmp_path).run(face_corpus / "source/s1.jpg", driving, checkpoint=str(tiny_checkpoint), job=job)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_cancel_answers_with_the_jobs_own_last_word():
    """Cancel waits for the session's job to stop and answers with the job's own status line, so the page cannot end
    on a stale "Cancelling…" when the job's "Cancelled." reaches it first (CI saw that race). With nothing to
    cancel (the job already ended: its "Done: …" stays) or a job slower to stop than the wait, it answers None (the
    page keeps what the job says); a job cancelled while queued stops as it starts."""
    import asyncio

    sessions = web.Sessions()

    def running(session, ends_as, delay=0.0):
        sessions.submit(session)
        job = sessions.start(session)

        def work():
            while not job.cancel.is_set():
                time.sleep(0.01)
            time.sleep(delay)
            job.status = ends_as
            sessions.end(session, job)
        thread = threading.Thread(target=work)
        thread.start()
        return job, thread

    job, thread = running("a", "Cancelled.", delay=0.3)
    assert asyncio.run(sessions.cancel("a", timeout=10)) == "Cancelled." and job.finished.is_set()
    thread.join()
    assert asyncio.run(sessions.cancel("a", timeout=10)) is None  # nothing left to cancel

    # a click skipped while a job ran leaves a queued job that never runs: gone when that job ends, so a later
    # Cancel does not claim "Cancelled." over the finished job's "Done: …"
    sessions.submit("g")
    done = sessions.start("g")
    sessions.submit("g")
    done.status = "Done: 3 frames"
    sessions.end("g", done)
    assert asyncio.run(sessions.cancel("g", timeout=10)) is None

    job, thread = running("b", "Cancelled.", delay=1.0)
    assert asyncio.run(sessions.cancel("b", timeout=0.1)) is None and job.cancel.is_set()
    thread.join()

    sessions.submit("c")  # queued behind another session's job: cancelled at once, and it stops as it starts
    assert asyncio.run(sessions.cancel("c", timeout=10)) == "Cancelled."
    assert sessions.start("c").cancel.is_set()
    assert not sessions.start("d").cancel.is_set()  # (another session's jobs are not touched)

    # a click whose run never started (gradio refused its inputs, or skipped a second click): Cancel does not wait
    # for it, and the next run does not inherit it nor its Cancel
    sessions.submit("f")
    t0 = time.monotonic()
    assert asyncio.run(sessions.cancel("f", timeout=10)) == "Cancelled." and time.monotonic() - t0 < 1
    sessions.submit("f")
    assert not sessions.start("f").cancel.is_set()

    # a closed tab: its running job is cancelled, its queued job never runs
    running_job, thread = running("e", "Cancelled.")
    sessions.submit("e")
    sessions.close("e")
    thread.join()
    assert running_job.status == "Cancelled." and sessions.start("e").cancel.is_set()


def test_the_job_follows_its_own_threads_bars_only():
    """The tqdm hook is process-wide while a job runs: a bar in another thread (a control's handler loading a
    model) neither feeds the job's progress nor is stopped by its Cancel."""
    from tqdm import tqdm

    seen, errors = [], []
    job = web.Job(lambda value, desc, unit: seen.append(desc))
    with web.follow_progress(job):
        def other():
            try:
                for _ in tqdm(range(3), desc="loading", mininterval=0):
                    pass
            except web.Cancelled as e:
                errors.append(e)
        job.cancel.set()
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        with pytest.raises(web.Cancelled):
            for _ in tqdm(range(3), desc="denoising", mininterval=0):
                pass
    assert errors == [] and "loading" not in seen


def test_error_messages_name_uploads_by_their_file_names():
    """gradio hands the app copies in its cache (/tmp/gradio/<hash>/clip.mp4): messages name the user's file."""
    cached = "/tmp/gradio/0ecff655cb/clip.mp4"
    message = f"cannot read video {cached}: not a video or corrupt (Invalid data: '{cached}')"
    assert web.uploaded_names(message, None, cached) == \
        "cannot read video clip.mp4: not a video or corrupt (Invalid data: 'clip.mp4')"


def test_status_text_is_shown_as_it_is():
    assert web.markdown_text("cannot read /tmp/a_b_c/*x*.mp4 <1>") == r"cannot read /tmp/a\_b\_c/\*x\*.mp4 \<1\>"


def test_a_model_asked_for_twice_at_once_loads_once(monkeypatch, tmp_path):
    """A control's change handler and a job can ask the runner for the same model at the same moment (two gradio
    threads): it is loaded once, and both get the same object (a GPU would otherwise hold it twice)."""
    from anchorface.methods import registry

    loads = []

    class Spec:
        needs_checkpoint = False

        @staticmethod
        def from_pretrained(path, device):
            loads.append(device)
            time.sleep(0.3)
            return object()

    monkeypatch.setattr(registry, "get_method", lambda name: Spec)
    runner, got = web.Runner(tmp_path), []
    threads = [threading.Thread(target=lambda: got.append(runner.method("m", None))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and got[0] is got[1]


def test_controls_show_each_models_own_defaults(tiny_checkpoint, tmp_path):
    """The merge / sampler / steps controls show the chosen model's defaults (a run sends what they show), and a
    checkpoint whose default is more steps than the slider's usual end (a paper preset's 1000) widens it."""
    import json

    pytest.importorskip("gradio")
    runner = web.Runner(tmp_path / "work")
    sample = read_config(tiny_checkpoint).sample
    takes, defaults = runner.options("anchored", str(tiny_checkpoint))
    assert {"merge", "sampler", "steps"} <= set(takes)
    assert defaults == {"merge": sample.merge, "sampler": sample.sampler, "steps": sample.steps}
    assert runner.options("still-source", None) == ((), {})
    paper = tmp_path / "paper-steps"
    shutil.copytree(tiny_checkpoint, paper)
    manifest = json.loads((paper / "anchorface.json").read_text())
    manifest["config"]["sample"].update(sampler="ddpm", steps=1000)
    (paper / "anchorface.json").write_text(json.dumps(manifest))
    assert runner.options("anchored", str(paper))[1]["steps"] == 1000
    app = web.build_app(str(paper), workdir=tmp_path / "work")
    slider = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "steps")
    assert slider.value == 1000 and slider.maximum >= 1000


def test_a_method_whose_model_cannot_load_keeps_its_controls_usable(tmp_path):
    """Method changed while the checkpoint field holds a bad path: the model cannot load, yet the controls that method
    takes are enabled, the checkpoint field above all (it stayed disabled after a baseline, and with it the one way
    out). A baseline disables them."""
    pytest.importorskip("gradio")
    app = web.build_app(workdir=tmp_path / "work")
    on_method = next(f.fn for f in app.fns.values()
                     if [(getattr(app.blocks[t[0]], "elem_id", None), t[1]) for t in f.targets if t[0] is not None]
                     == [("method", "change")])
    assert [u.get("interactive") for u in on_method("copy-driving", str(tmp_path / "x"))] == [False] * 5
    updates = on_method("anchored", str(tmp_path / "x"))  # (no such checkpoint)
    assert [u.get("interactive") for u in updates] == [True] * 5 and "value" not in updates[1]
    assert [u.get("interactive") for u in on_method("diffusionact", "demo")] == [True, False, False, True, True]
    assert on_method("no-such-method", "demo") == [{"__type__": "update"}] * 5  # (unchanged, no crash)


def test_runner_errors_are_one_line(tmp_path, driving, face_corpus):
    runner = web.Runner(tmp_path)
    not_an_image = tmp_path / "photo.jpg"
    not_an_image.write_text("not an image")
    cases = [((None, driving), {}, "upload a face photo"),
             ((not_an_image, driving), {}, "photo.jpg"),
             ((face_corpus / "source/s1.jpg", driving), {"checkpoint": str(tmp_path / "nope")}, "does not exist"),
             ((face_corpus / "source/s1.jpg", driving), {"seed": -1}, "seed"),
             ((face_corpus / "source/s1.jpg", driving), {"seed": float("inf")}, "seed"),
             ((face_corpus / "source/s1.jpg", driving), {"steps": float("nan")}, "steps"),
             ((face_corpus / "source/s1.jpg", driving), {"steps": 2.7}, "steps"),
             ((face_corpus / "source/s1.jpg", driving), {"seed": 1.5}, "seed"),
             ((face_corpus / "source/s1.jpg", driving), {"seed": float(2 ** 60)}, "loses digits"),
             ((face_corpus / "source/s1.jpg", driving), {"method": "nope"}, "unknown method"),
             ((face_corpus / "source/s1.jpg", driving), {"checkpoint": str(not_an_image)}, "is a file; give its folder")]
    for args, kwargs, expected in cases:
        with pytest.raises(AnchorfaceError) as e:
            runner.run(*args, **kwargs)
        assert expected in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ in a real browser

def browser_or_skip():
    """(chromium, chromedriver, selenium.webdriver): skipped with the reason when one is missing, failed in CI (CI=true
    must run every test; .ci/run installs Debian's chromium and chromium-driver and the dev extra)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    debs = [what for what, ok in (("chromium", chromium), ("chromium-driver", driver)) if not ok]
    missing = [f"{' '.join(debs)} (apt-get install {' '.join(debs)})"] if debs else []
    try:
        from selenium import webdriver
        import gradio  # noqa: F401
    except ImportError as e:
        missing.append(f"the python package {e.name} (pip install -e '.[dev]')")
    if missing:
        why = f"the browser test needs {' and '.join(missing)}"
        if in_ci():
            pytest.fail(f"{why}; CI=true runs every test", pytrace=False)
        pytest.skip(why)
    return chromium, driver, webdriver


@pytest.fixture
def browser_tools():
    """(chromium, chromedriver, selenium.webdriver), checked before the server starts."""
    return browser_or_skip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`anchorface web` in a subprocess on a free port of 127.0.0.1; yields its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC), "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "anchorface", "web", "--port", str(port), "--device", "cpu"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"anchorface web exited with {proc.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "anchorface web did not answer within 180 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def wait_for(predicate, what: str, timeout: float = 120.0, page=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = page() if page else ""
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; the page shows: {shown!r}", pytrace=False)
        time.sleep(0.2)


@pytest.mark.browser
def test_web_ui_in_headless_chromium(browser_tools, server, photo, driving, tmp_path):
    chromium, chromedriver, webdriver = browser_tools
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--mute-audio"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731
    text = lambda sel: " ".join(e.text for e in css(sel))  # noqa: E731

    def type_into(sel: str, value: str) -> None:
        box = css(sel)[0]
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)

    def reenact() -> None:
        css("#run")[0].click()

    def body() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    def wait(predicate, what: str, timeout: float = 120.0):
        return wait_for(predicate, what, timeout, page=body)

    try:
        browser.get(server)
        wait(lambda: css("#photo input[type=file]") and css("#driving input[type=file]"), "the page")
        css("#photo input[type=file]")[0].send_keys(str(photo))
        css("#driving input[type=file]")[0].send_keys(str(driving))
        wait(lambda: css("#photo img") and css("#driving video"), "the uploads to show")

        # a checkpoint folder that does not exist: the one-line error, no traceback in the page
        type_into("#checkpoint input", str(tmp_path / "no-such-checkpoint"))
        reenact()
        msg = wait(lambda: "does not exist" in text("#status") and text("#status"), "the error message")
        assert f"Error: checkpoint folder {tmp_path / 'no-such-checkpoint'} does not exist" in msg  # (it stays)
        assert "Traceback" not in browser.page_source and "File \"" not in browser.page_source
        for close in css(".toast-close"):
            close.click()

        # many steps, then Cancel once the denoising bar shows: "Cancelled.", no video
        type_into("#checkpoint input", web.DEMO_CHOICE)
        type_into("#steps input[type=number]", str(web.MAX_STEPS))
        reenact()
        wait(lambda: "denoising" in text("#result"), "the denoising progress", timeout=180)
        css("#cancel")[0].click()
        wait(lambda: "Cancelled." in text("#status"), "the job to stop")
        time.sleep(1.0)  # (both answers are in: the job's and the Cancel button's)
        assert "Cancelled." in text("#status")
        assert not [v for v in css("#result video") if v.get_attribute("src")]

        # a tiny job with the demo model: both videos play in the page, and the result decodes to every frame
        type_into("#steps input[type=number]", str(read_config(web.Runner.checkpoint_path(None)).sample.steps))
        reenact()
        wait(lambda: "Done:" in text("#status"), "the result", timeout=300)
        for sel in ("#result video", "#comparison video"):
            state = wait(lambda sel=sel: browser.execute_script(
                f"const v = document.querySelector('{sel}');"
                "return v && v.readyState >= 1 && v.duration > 0 ? [v.readyState, v.duration] : null"),
                f"{sel} to load")
            assert state[1] == pytest.approx(CLIP_FRAMES / 25, abs=0.1)
        listed = text("#download").replace("\n", "")  # (the page breaks a name before its suffix)
        assert "reenacted.mp4" in listed and "compare.mp4" in listed
        assert f"{CLIP_FRAMES} frames at 25 fps" in text("#status")
        src = css("#result video")[0].get_attribute("src")
        assert src.startswith(server)
        downloaded = tmp_path / "downloaded.mp4"
        with urllib.request.urlopen(src, timeout=30) as r:
            downloaded.write_bytes(r.read())
        assert len(list(iter_frames(downloaded))) == CLIP_FRAMES
        if os.environ.get(SCREENSHOT_ENV):  # docs/images/web-ui.png: the whole page, 1280 px wide
            css("#checkpoint input")[0].send_keys(Keys.ESCAPE)  # (closes the dropdown list typed into)
            browser.execute_script("document.activeElement.blur()")
            browser.execute_script("document.querySelectorAll('video').forEach(v => v.currentTime = 0.4)")
            for _ in range(3):  # (the page may grow once the viewport does)
                height = browser.execute_script("return document.documentElement.scrollHeight")
                browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                        {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False})
                time.sleep(0.5)
            browser.execute_script("window.scrollTo(0, 0)")
            time.sleep(1.0)
            browser.save_screenshot(os.environ[SCREENSHOT_ENV])
    finally:
        browser.quit()
