"""`anchorface reenact --batch pairs.csv`: many reenactments with one model load, resumable.

The CSV has one row per job, `photo,driving,output` (a header row with those names is allowed, anywhere; relative
paths are taken from the CSV's folder; blank lines and lines starting with # are ignored). A row whose output is its
own photo or driving video, or the output of an earlier row, or not a video file, is a bad row. Rows whose output
video exists are skipped, so running the same command again resumes an interrupted batch; every output is written
atomically (`io.video.VideoWriter`), so an interrupted row leaves nothing behind and is redone. A bad row (missing
file, no face, corrupt video, ...) is reported in one line and skipped; the others still run. The exit status is 1
when any row failed, after a summary line.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from anchorface.errors import AnchorfaceError, io_errors, one_line

COLUMNS = ("photo", "driving", "output")


@dataclass
class Job:
    line: int  # line number in the CSV (1-based), for messages
    photo: Path | None
    driving: Path | None
    output: Path | None
    error: str | None = None  # a row that cannot be read as a job


def read_jobs(path: str | Path) -> list[Job]:
    """The jobs of a batch CSV (module docstring). AnchorfaceError when the file cannot be read at all; a malformed
    row becomes a `Job` with `error` set (reported and skipped like any bad row)."""
    from anchorface.methods.flow import OUTPUT_SUFFIXES

    path = Path(path)
    try:
        data = path.read_bytes()
        # UTF-8 (with or without a BOM, as spreadsheets save it), or UTF-16 / UTF-32 with a BOM (Excel's "Unicode
        # text" is UTF-16); NUL bytes in a quarter of the file: UTF-16 / 32 without a BOM, which cannot be told apart
        if data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
            encoding = "utf-32"
        elif data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            encoding = "utf-16"
        elif data.count(0) * 4 > len(data):
            raise UnicodeError("it looks like UTF-16 or UTF-32 without a byte-order mark; save it as UTF-8")
        else:
            encoding = "utf-8-sig"
        text = data.decode(encoding)
        rows, line = [], 1  # (first line of the record, cells): a quoted cell may span lines
        reader = csv.reader(io.StringIO(text, newline=""))
        for row in reader:
            rows.append((line, row))
            line = reader.line_num + 1
    except (OSError, UnicodeError, csv.Error) as e:
        raise AnchorfaceError(f"cannot read the batch file {path}: {one_line(e)}") from None
    base, jobs, outputs = path.parent, [], {}  # outputs: resolved path -> the line of the row that writes it
    for i, row in rows:
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if [c.lower() for c in cells] == list(COLUMNS):
            continue  # a header: after comments or a bad row, or the next file's in two CSVs joined (never a job)
        if len(cells) != 3 or not all(cells):
            jobs.append(Job(i, None, None, None, f"expected 3 columns {','.join(COLUMNS)}, got {len(cells)}"))
            continue
        if any("\n" in c or "\r" in c for c in cells):  # (a quoted cell over two lines: surely not a file name)
            jobs.append(Job(i, None, None, None, "a cell holds a line break (a quote left open?)"))
            continue
        photo, driving, output = (Path(c) if Path(c).is_absolute() else base / c for c in cells)
        try:
            target, sources, error = output.resolve(), (photo.resolve(), driving.resolve()), None
        except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a NUL byte...
            jobs.append(Job(i, None, None, None, f"a path cannot be used: {one_line(e)}"))
            continue
        if output.suffix.lower() not in OUTPUT_SUFFIXES:
            error = f"the output {output} is not a video ({', '.join(OUTPUT_SUFFIXES)})"
        elif target in sources:
            error = f"the output {output} would overwrite the {'photo' if target == sources[0] else 'driving video'}"
        elif target in outputs:
            error = f"the output {output} is already the output of row {outputs[target]}"
        if error is None:
            outputs.setdefault(target, i)  # (a rejected row writes nothing, so claims no output)
        jobs.append(Job(i, photo, driving, output, error))
    if not jobs:
        raise AnchorfaceError(f"the batch file {path} has no rows (columns {','.join(COLUMNS)})")
    return jobs


def run_jobs(jobs: list[Job], render: Callable[[Job], str], *, is_main: bool = True, report=None) -> int:
    """Run `render(job)` (which writes job.output and returns a one-line summary) for each job whose output does not
    exist yet; report each row on one line and a summary; return the number of failed rows. Which rows to skip is
    decided before any work, so every process of a multi-process launch runs the same rows."""
    report = report or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say = report if is_main else (lambda msg: None)
    todo = [j for j in jobs if j.error is not None or not j.output.is_file()]  # (a folder in the way: reported)
    skipped, done, failed = len(jobs) - len(todo), 0, 0
    for k, job in enumerate(todo, start=1):
        where = f"row {job.line}" + (f" ({job.output.name})" if job.output is not None else "")
        if job.error is not None:
            say(f"anchorface: error: batch {where}: {job.error}")
            failed += 1
            continue
        try:
            summary = render(job)
        except AnchorfaceError as e:
            say(f"anchorface: error: batch {where}: {one_line(e)}")
            failed += 1
            continue
        except io_errors() as e:
            say(f"anchorface: error: batch {where}: {one_line(e)}")
            failed += 1
            continue
        done += 1
        say(f"[{k}/{len(todo)}] {where}: {summary}")
    say(f"batch: {done} written, {skipped} skipped (output exists), {failed} failed of {len(jobs)} rows")
    return failed
