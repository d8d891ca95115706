"""The shared `face_corpus` fixture: without the corpus a test that needs it is skipped with the reason, except in
CI (CI=true), where that is a failure, not a silent skip."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

NEEDS_CORPUS = """
def test_reads_the_corpus(face_corpus):
    assert (face_corpus / "driving").is_dir()

def test_needs_nothing():
    pass
"""


@pytest.fixture
def suite(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_corpus=NEEDS_CORPUS)
    return pytester


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_corpus_fails_in_ci(suite, monkeypatch, tmp_path, ci):
    monkeypatch.setenv("ANCHORFACE_FACES", str(tmp_path / "nowhere"))
    monkeypatch.setenv("CI", ci)
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*real face corpus not found at *nowhere*CI=true runs every test*"])


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_missing_corpus_skips_with_the_reason_outside_ci(suite, monkeypatch, tmp_path, ci):
    monkeypatch.setenv("ANCHORFACE_FACES", str(tmp_path / "nowhere"))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*real face corpus not found at *nowhere*set ANCHORFACE_FACES*"])


def test_corpus_found_where_the_variable_points(suite, monkeypatch, tmp_path):
    for d in ("driving", "source"):
        (tmp_path / "corpus" / d).mkdir(parents=True)
    monkeypatch.setenv("ANCHORFACE_FACES", str(tmp_path / "corpus"))
    monkeypatch.setenv("CI", "true")
    suite.runpytest().assert_outcomes(passed=2)
