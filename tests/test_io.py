"""lit_inheritune/io.py: files appear whole or not at all, in the formats the package's files on disk keep."""

import hashlib
import json

import pytest

from lit_inheritune.io import (
    atomic_dir,
    file_sha256,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)


def test_json_keeps_the_on_disk_format(tmp_path):
    path = tmp_path / "result.json"
    obj = {"b": 1, "a": {"d": [1, 2], "c": "é"}}
    write_json_atomic(path, obj)
    assert path.read_text(encoding="utf-8") == json.dumps(obj, indent=2, sort_keys=True) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temporary file left


def test_text_bytes_and_csv(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "ünïcode\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "ünïcode\n"
    write_bytes_atomic(tmp_path / "b.bin", memoryview(b"\x00\x01"))
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    write_csv_atomic(tmp_path / "csv" / "metrics.csv", ["step", "val/loss"], [{"step": 1, "val/loss": 2.5}])
    assert (tmp_path / "csv" / "metrics.csv").read_bytes() == b"step,val/loss\r\n1,2.5\r\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"n": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"n": object()})
    assert json.loads(path.read_text()) == {"n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_dir_replaces_or_keeps_and_cleans_up(tmp_path):
    out = tmp_path / "deep" / "out"
    with atomic_dir(out) as d:
        (d / "x").write_text("1")
        assert not out.exists()
    assert (out / "x").read_text() == "1"
    with atomic_dir(out) as d:  # replaces
        (d / "y").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["y"]
    with atomic_dir(out, keep_existing=True) as d:  # someone finished first: theirs stay
        (d / "z").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["y"]
    with pytest.raises(RuntimeError), atomic_dir(out) as d:
        (d / "w").write_text("4")
        raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["y"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert file_sha256(tmp_path / "f", chunk_bytes=7) == hashlib.sha256(data).hexdigest()
