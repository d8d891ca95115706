"""MediaPipe's native log lines, kept off the user's terminal: the one place that knows how.

MediaPipe's C++ graphs (absl/glog) and TFLite print start-up notices and ROI warnings straight to file
descriptor 2, from their own threads, whatever Python's logging settings. Two tools: `native_stderr_silenced`
hides fd 2 around one call (a library call, tests); `quiet_process` is for the console command: it sets the
native log levels and, for the whole process, routes fd 2 through a filter that drops only those notices.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading

# the notices' first characters: glog lines (W0000/I0000 ...), TFLite's delegate line, absl's pre-init warning
NATIVE_NOISE = re.compile(rb"^(?:[WI]0000 |INFO: Created TensorFlow Lite|WARNING: All log messages before absl)")


@contextlib.contextmanager
def native_stderr_silenced():
    """Hide what native code writes to file descriptor 2 meanwhile. MediaPipe's C++ graphs print absl/TFLite
    start-up lines there on their first frame, before any logging setting can apply; users should not see them."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced (pytest capture, notebooks): nothing to hide
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def run_quietly(mediapipe_solution, frame):
    """`solution.process(frame)` with MediaPipe's native log lines (start-up, ROI notices) kept off the terminal."""
    with native_stderr_silenced():
        return mediapipe_solution.process(frame)


def quiet_process(filter_stderr: bool) -> None:
    """For the console command, before MediaPipe loads: native log levels down (glog, TensorFlow), and with
    `filter_stderr` fd 2 filtered for the rest of the process (`filter_native_stderr`)."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if filter_stderr:
        filter_native_stderr()


def filter_native_stderr() -> None:
    """Route fd 2 through a pipe that drops MediaPipe/TFLite notices; Python's own stderr (progress bars, errors)
    keeps writing to the terminal directly, so it is neither delayed nor filtered."""
    try:
        terminal = os.dup(2)
    except OSError:
        return
    sys.stderr.flush()
    sys.stderr = io.TextIOWrapper(os.fdopen(terminal, "wb", buffering=0), write_through=True,
                                  encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not NATIVE_NOISE.match(line):
                    os.write(terminal, line)

    threading.Thread(target=pump, name="native-stderr", daemon=True).start()
