from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from monai_disc.io import atomic_path, atomic_torch_save, atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def test_writes_land_complete_with_no_temp_left(tmp_path):
    data = bytes(range(256)) * 1000
    assert atomic_write_bytes(tmp_path / "a.bin", data) == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == data

    atomic_write_text(str(tmp_path / "b.csv"), "x,y\r\n1,é\n")
    assert (tmp_path / "b.csv").read_bytes() == "x,y\r\n1,é\n".encode()  # utf-8, newlines as given

    weights = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "step": 7}
    atomic_torch_save(weights, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt")
    assert loaded["step"] == 7 and torch.equal(loaded["w"], weights["w"])

    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.csv", "c.pt"]


def test_overwrite_replaces_the_old_content(tmp_path):
    target = tmp_path / "t.txt"
    atomic_write_text(target, "old and longer")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_atomic_path_yields_a_hidden_temp_beside_the_target_and_renames_it(tmp_path):
    target = tmp_path / "pic.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".pic.png.") and tmp.suffix == ".tmp"
        assert tmp.is_file() and not target.exists()  # nothing under the final name until the end
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done" and not tmp.exists()


def test_error_inside_atomic_path_leaves_no_temp_and_no_target(tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_error_inside_atomic_path_keeps_the_older_target_intact(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, '{"epoch": 3}')
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text('{"epo')
            raise KeyboardInterrupt
    assert target.read_text() == '{"epoch": 3}'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failing_torch_save_leaves_the_older_file(tmp_path):
    target = tmp_path / "model.pt"
    atomic_torch_save({"a": 1}, target)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_torch_save({"w": torch.ones(1000), "bad": _Unpicklable()}, target)
    assert torch.load(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_files_get_plain_open_permissions_not_mkstemp_private_ones(tmp_path, umask_022):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_torch_save([1], tmp_path / "b.pt")
    with atomic_path(tmp_path / "c.png") as tmp:
        tmp.write_bytes(b"png")
    for name in ("a.bin", "b.pt", "c.png"):
        assert _mode(tmp_path / name) == 0o644, name


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "private.bin", b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.bin") == 0o600


def test_missing_parent_folders_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "c" / "out.txt"
    atomic_write_text(target, "deep")
    assert target.read_text() == "deep"
    with atomic_path(tmp_path / "x" / "y.bin") as tmp:
        assert tmp.parent.is_dir()
        tmp.write_bytes(b"1")
    assert (tmp_path / "x" / "y.bin").read_bytes() == b"1"


def test_concurrent_writers_of_one_target_get_separate_temps_and_the_last_rename_wins(tmp_path):
    target = tmp_path / "manifest.json"
    with atomic_path(target) as first:
        with atomic_path(target) as second:
            assert first != second
            first.write_text("first")
            second.write_text("second")
        assert target.read_text() == "second" and first.read_text() == "first"
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
