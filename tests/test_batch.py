"""`anchorface reenact --batch pairs.csv`: one model load, bad rows reported and skipped, resumable."""

import pytest

from anchorface.apps.batch import read_jobs, run_jobs
from anchorface.apps.cli import main
from anchorface.errors import AnchorfaceError
from anchorface.io.video import VideoWriter, iter_frames, probe_video

pytestmark = pytest.mark.usefixtures("face_corpus")


@pytest.fixture(scope="module")
def clip(tmp_path_factory, face_corpus):
    src = face_corpus / "driving/d20.mp4"
    out = tmp_path_factory.mktemp("batch-clip") / "d20_12.mp4"
    with VideoWriter(out, probe_video(src).fps) as w:
        for frame in iter_frames(src, max_frames=12):
            w.write(frame)
    return out


def batch(capsys, csv, checkpoint, *extra):
    code = main(["reenact", "--batch", str(csv), "--checkpoint", str(checkpoint), "--steps", "1", "--quiet", *extra])
    return code, capsys.readouterr().err


def test_batch_bad_rows_are_skipped_and_the_run_resumes(tiny_checkpoint, clip, face_corpus, tmp_path, capsys,
                                                        monkeypatch):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00" * 64 + clip.read_bytes()[3000:9000])
    src = face_corpus / "source"
    out = tmp_path / "out"
    out.mkdir()
    csv = tmp_path / "pairs.csv"
    csv.write_text("photo,driving,output\n"
                   f"{src / 's1.jpg'},{clip},out/a.mp4\n"  # good (relative output: beside the CSV)
                   f"{src / 'missing.jpg'},{clip},out/b.mp4\n"  # missing photo
                   f"{src / 's22.jpg'},{clip},out/c.mp4\n"  # an animal: no face
                   f"{src / 's2.jpg'},{corrupt},out/d.mp4\n"  # corrupt video
                   "only-two,columns\n"
                   f"{src / 's2.jpg'},{clip},out/e.mp4\n")  # good, after the bad ones
    loads = []
    from anchorface.methods.anchored.pipeline import AnchoredDiffusion

    real = AnchoredDiffusion.from_pretrained.__func__
    monkeypatch.setattr(AnchoredDiffusion, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(1) or real(cls, *a, **k)))
    code, err = batch(capsys, csv, tiny_checkpoint)
    assert code == 1 and len(loads) == 1  # the model is loaded once for all rows
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    for name, why in (("b.mp4", "missing.jpg"), ("c.mp4", "no face"), ("d.mp4", "corrupt.mp4"), ("row 6", "3 columns")):
        assert sum(name in ln and why in ln and ln.startswith("anchorface: error: batch") for ln in lines) == 1, err
    assert lines[-1] == "batch: 2 written, 0 skipped (output exists), 4 failed of 6 rows"
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "e.mp4"]  # no partial or temporary file
    assert probe_video(out / "a.mp4").num_frames == 12
    stamp = (out / "a.mp4").stat().st_mtime_ns
    # resume: the finished rows are skipped, the bad ones reported again
    code, err = batch(capsys, csv, tiny_checkpoint)
    assert code == 1 and err.strip().splitlines()[-1] == "batch: 0 written, 2 skipped (output exists), 4 failed of 6 rows"
    assert (out / "a.mp4").stat().st_mtime_ns == stamp
    # an interrupted batch: remove one output, drop the bad rows; the run redoes that row only and succeeds
    (out / "e.mp4").unlink()
    csv.write_text("\n".join(csv.read_text().splitlines()[i] for i in (1, 6)) + "\n")  # no header: allowed
    code, err = batch(capsys, csv, tiny_checkpoint)
    assert code == 0 and err.strip().splitlines()[-1] == "batch: 1 written, 1 skipped (output exists), 0 failed of 2 rows"
    assert (out / "e.mp4").exists()


def test_batch_usage_errors(tiny_checkpoint, tmp_path, capsys, clip):
    code, err = batch(capsys, tmp_path / "nope.csv", tiny_checkpoint)
    assert code == 1 and "cannot read the batch file" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty.csv"
    empty.write_text("photo,driving,output\n")
    with pytest.raises(AnchorfaceError, match="no rows"):
        read_jobs(empty)
    code, err = batch(capsys, empty, tiny_checkpoint, "-o", str(tmp_path / "x.mp4"))
    assert code == 1 and "--batch takes" in err


def test_batch_rows_that_overwrite_an_input_or_another_rows_output_are_bad_rows(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"video")
    csv = tmp_path / "pairs.csv"
    csv.write_text("p.jpg,clip.mp4,a.mp4\n"
                   "p.jpg,clip.mp4,./a.mp4\n"  # the same output again: would overwrite row 1's video
                   f"p.jpg,clip.mp4,{tmp_path / 'clip.mp4'}\n"  # the output is the driving video
                   "p.mp4,clip.mp4,p.mp4\n"  # the output is the photo
                   "p.jpg,clip.mp4,b.mp4\n")
    jobs = read_jobs(csv)
    assert [j.error is None for j in jobs] == [True, False, False, False, True]
    assert "row 1" in jobs[1].error and "driving" in jobs[2].error and "photo" in jobs[3].error
    rendered = []
    failed = run_jobs(jobs, lambda job: rendered.append(job.line) or "ok", report=lambda msg: None)
    assert failed == 3 and rendered == [1, 5]  # (an existing driving video as output is not "already done")


def test_batch_rows_with_unresolvable_paths_are_bad_rows(tmp_path):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    csv = tmp_path / "pairs.csv"
    csv.write_text("p.jpg,clip.mp4,a\x00b.mp4\np.jpg,clip.mp4,loop1/x.mp4\np.jpg,clip.mp4,ok.mp4\n")
    jobs = read_jobs(csv)
    assert [j.error is None for j in jobs] == [False, False, True]
    assert all("\n" not in j.error for j in jobs[:2])


def test_an_existing_output_that_is_not_a_video_is_a_bad_row_not_done(tmp_path):
    """Only a finished video counts as done (resume): a folder, or a file that is no video output, is reported."""
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "done.mp4").write_bytes(b"video")
    csv = tmp_path / "pairs.csv"
    csv.write_text("p.jpg,clip.mp4,folder.mp4\np.jpg,clip.mp4,notes.txt\np.jpg,clip.mp4,done.mp4\n")
    messages = []
    failed = run_jobs(read_jobs(csv), lambda job: (_ for _ in ()).throw(AnchorfaceError(f"{job.output} is bad")),
                      report=messages.append)
    assert failed == 2 and messages[-1] == "batch: 0 written, 1 skipped (output exists), 2 failed of 3 rows"
    assert "row 2" in messages[1] and ".txt" in messages[1]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_batch_csv_as_spreadsheets_write_it(tmp_path):
    """A quoted cell may hold a comma; one holding a line break is a record over two lines (later rows keep their
    line numbers) and a bad row, not a file name printed over two lines. Excel's "Unicode text" CSV is UTF-16 with
    a BOM, UTF-32 has one too; without a BOM they are one file-level error, as Latin-1 is."""
    text = ('photo,driving,output\np.jpg,clip.mp4,"out, 1.mp4"\n"a\nb.jpg",clip.mp4,o.mp4\n'
            'p.jpg,clip.mp4,x.txt\n')
    for name, data in (("utf8.csv", text.encode("utf-8-sig")), ("utf16.csv", text.encode("utf-16")),
                       ("utf32.csv", text.encode("utf-32"))):
        (tmp_path / name).write_bytes(data)
        jobs = read_jobs(tmp_path / name)
        assert [(j.line, j.error is None) for j in jobs] == [(2, True), (3, False), (5, False)], name
        assert jobs[0].output == tmp_path / "out, 1.mp4" and "line break" in jobs[1].error
    for name, data in (("latin1.csv", "é.jpg,clip.mp4,o.mp4\n".encode("latin-1")),
                       ("utf16le.csv", text.encode("utf-16-le")), ("utf32be.csv", text.encode("utf-32-be"))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AnchorfaceError, match=f"cannot read the batch file .*{name}: .*(codec|byte-order)"):
            read_jobs(tmp_path / name)


def test_header_after_comments_and_rejected_rows_claim_no_output(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("# my jobs\n\nphoto,driving,output\n"
                   "p.jpg,clip.mp4,p.jpg\n"  # bad: the output is no video, and would be the photo
                   "p.jpg,clip.mp4,o.txt\n"  # bad: not a video
                   "q.jpg,clip.mp4,o.mp4\n")
    jobs = read_jobs(csv)
    assert [(j.line, j.error is None) for j in jobs] == [(4, False), (5, False), (6, True)]
    (tmp_path / "a.csv").write_text("p.jpg,clip.mp4,clip.mp4\n"  # bad: would overwrite its driving video
                                    "p.jpg,other.mp4,clip.mp4\n")  # fine: row 1 writes nothing
    assert [j.error is None for j in read_jobs(tmp_path / "a.csv")] == [False, True]
    # after a malformed row, or two CSVs joined: still a header, not a bad row ("output" is no video anyway)
    (tmp_path / "b.csv").write_text("p.jpg,clip.mp4\nPhoto,Driving,Output\nq.jpg,clip.mp4,o.mp4\n"
                                    "photo,driving,output\nr.jpg,clip.mp4,r.mp4\n")
    assert [(j.line, j.error is None) for j in read_jobs(tmp_path / "b.csv")] == [(1, False), (3, True), (5, True)]
