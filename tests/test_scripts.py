"""The benchmark and study scripts (benchmarks/, scripts/): each still imports against the package (a renamed
symbol broke bench_model.py unnoticed once), and bad arguments are one line with a non-zero exit, never a traceback
(`apps.cli.Parser` and `apps.cli.run_command`, as for `anchorface`)."""

import importlib.util
from pathlib import Path

import pytest

from anchorface.apps.cli import run_command

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # (top level only: `if __name__ == "__main__"` does not run)
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_imports_and_runs_as_a_command(path):
    module = load(path)
    assert callable(module.main)
    assert "run_command(main" in path.read_text()  # one-line errors, SIGTERM / Ctrl-C unwinding


@pytest.mark.parametrize("script, argv, words", [
    ("bench_sampler_overhead", ["--threads", "0"], "--threads: expected an integer >= 1"),
    ("bench_sampler_overhead", ["--repeats", "0"], "--repeats: expected an integer >= 1"),
    ("bench_sampler_overhead", ["--plans", "bogus"], "invalid choice: 'bogus'"),
    ("bench_sampler_overhead", ["--sampler", "bogus"], "invalid choice: 'bogus'"),
    ("bench_reenact", ["--frames", "-5"], "--frames: expected an integer >= 0"),
    ("bench_reenact", ["--skip-reenact"], "--skip-reenact leaves nothing to measure without --mfu"),
    ("bench_reenact", ["--peak-tflops", "nan"], "--peak-tflops: expected a finite number"),
])
def test_bad_arguments_are_one_line(script, argv, words, capsys):
    module = load(ROOT / "benchmarks" / f"{script}.py")
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and words in err and len(err.splitlines()) == 1 and err.startswith(f"{script}: error:")
    assert err.endswith(f"(see python benchmarks/{script}.py --help)")  # (a command that exists)


def test_errors_in_a_run_are_one_line_and_nothing_is_half_written(tmp_path, capsys):
    module = load(ROOT / "benchmarks" / "bench_sampler_overhead.py")
    assert run_command(lambda: module.main(["--checkpoint", str(tmp_path / "missing")]), "bench") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error:") and "missing" in err and len(err.splitlines()) == 1
    bench = load(ROOT / "benchmarks" / "bench_reenact.py")
    target = tmp_path / "file"
    target.write_text("x")  # --json's folder is a file: refused before the run, not after it
    assert run_command(lambda: bench.main(["--json", str(target / "out.json")]), "bench") == 1
    assert "is a file" in capsys.readouterr().err
