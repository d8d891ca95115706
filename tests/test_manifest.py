"""anchorface.io.manifest: versioned JSON written atomically, read with every check, each failure one line of the
caller's error class."""

import json

import pytest

from anchorface.errors import AnchorfaceError, CheckpointError
from anchorface.io.manifest import read_json_object, read_manifest, write_json, write_manifest


def test_roundtrip(tmp_path):
    write_manifest(tmp_path / "m.json", "thing", 3, {"config": {"a": 1}})
    assert read_manifest(tmp_path / "m.json", "thing", 3, required=("config",)) == \
        {"format": "thing", "version": 3, "config": {"a": 1}}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left


@pytest.mark.parametrize("text,message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('"thing"', "expected a JSON object, got str"),
    ('{"format": "thing", "version": 2, "config": {}}', "unsupported checkpoint format 'thing' v2 .expected thing v3"),
    ('{"format": "other", "version": 3, "config": {}}', "unsupported checkpoint format 'other'"),
    ('{"version": 3, "config": {}}', "unsupported checkpoint format None"),
    ('{"format": "thing", "version": 3}', r"incomplete checkpoint \(missing \['config'\]\)"),
])
def test_bad_manifests_are_one_line_errors_of_the_callers_class(tmp_path, text, message):
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=message) as e:
        read_manifest(path, "thing", 3, required=("config",), error=CheckpointError, what="checkpoint")
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(AnchorfaceError, match="cannot read .*missing.json"):
        read_json_object(tmp_path / "missing.json")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(CheckpointError, match="cannot read .*dir.json"):
        read_json_object(tmp_path / "dir.json", CheckpointError)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(AnchorfaceError, match="cannot read"):
        read_json_object(tmp_path / "bin.json")
    with pytest.raises(CheckpointError, match="cannot write .*dir.json: it is a directory"):
        write_json(tmp_path / "dir.json", {}, CheckpointError)
    write_json(tmp_path / "ok.json", {"b": [1]}, indent=1)
    assert json.loads((tmp_path / "ok.json").read_text()) == {"b": [1]}


def test_manifest_in_tells_missing_file_and_empty_apart(tmp_path):
    from anchorface.io.manifest import manifest_in

    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        manifest_in(tmp_path / "nope", "m.json", "checkpoint", "a checkpoint", CheckpointError)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, expected a checkpoint directory"):
        manifest_in(tmp_path / "file", "m.json", "checkpoint", "a checkpoint", CheckpointError)
    with pytest.raises(AnchorfaceError, match=f"{tmp_path} is not a dataset"):
        manifest_in(tmp_path, "m.json", "dataset", "a dataset")
    (tmp_path / "m.json").write_text("{}")
    assert manifest_in(tmp_path, "m.json", "dataset", "a dataset") == tmp_path / "m.json"
