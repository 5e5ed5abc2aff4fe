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


# ---------------------------------------------------------------------------------------- settings record
def test_same_settings_resume_other_settings_stop_naming_them_and_overwrite_starts_over(tmp_path):
    from monai_disc.io import SettingsMismatchError, job_settings

    out = tmp_path / "job"
    record = job_settings(out, {"seed": 0, "size": (64, 64), "data": tmp_path})
    (out / "done.txt").write_text("finished work")
    assert job_settings(out, {"seed": 0, "size": [64, 64], "data": str(tmp_path)}) == record  # resumes
    assert (out / "done.txt").is_file()
    with pytest.raises(SettingsMismatchError) as err:
        job_settings(out, {"seed": 9, "size": (64, 64), "data": tmp_path, "steps": 2})
    assert str(err.value) == (
        f"{out} holds outputs made with other settings (seed: 0 -> 9; steps: (none) -> 2); rerun with the same "
        "settings to resume, pass --overwrite (overwrite=True) to start over, or choose another folder"
    )
    assert (out / "done.txt").is_file()  # nothing removed
    job_settings(out, {"seed": 9}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["settings.json"]
    assert '"seed": 9' in record.read_text()


def test_a_folder_of_other_files_without_a_record_is_never_cleared(tmp_path):
    from monai_disc.io import SettingsMismatchError, job_settings

    (tmp_path / "mine.txt").write_text("a user's file")
    for overwrite in (False, True):
        with pytest.raises(SettingsMismatchError, match="is not empty and has no settings.json record"):
            job_settings(tmp_path, {"seed": 0}, overwrite=overwrite)
    assert (tmp_path / "mine.txt").read_text() == "a user's file"


_WRITER = """
import sys, time
from monai_disc.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half")
    print(tmp, flush=True)
    time.sleep(600)
"""


def test_a_restart_removes_the_temp_files_of_killed_writers_and_keeps_live_ones(tmp_path):
    import subprocess
    import sys

    from monai_disc.io import job_settings

    out = tmp_path / "job"
    job_settings(out, {"seed": 0})
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(out / name)], stdout=subprocess.PIPE, text=True)
        for name in ("killed.pt", "live.pt")
    ]
    try:
        temps = [Path(w.stdout.readline().strip()) for w in writers]
        assert all(t.is_file() and t.name.endswith(".tmp") for t in temps)
        writers[0].kill()  # a job killed during an atomic save
        writers[0].wait(timeout=30)
        stale_old_form = out / ".old.pt.0123abcd.tmp"  # the ownerless form of earlier versions, long left
        stale_old_form.write_bytes(b"x")
        os.utime(stale_old_form, (0, 0))
        job_settings(out, {"seed": 0})  # the restart
        assert not temps[0].exists() and not stale_old_form.exists()
        assert temps[1].is_file()  # a live writer's file is left alone
    finally:
        for w in writers:
            w.kill()
            w.wait(timeout=30)


def test_torch_save_writes_the_same_bytes_for_the_same_content_under_any_temp_name(tmp_path):
    content = {"latents": torch.arange(24, dtype=torch.float16).reshape(2, 3, 4), "seed": 3}
    first = atomic_torch_save(content, tmp_path / "a" / "shard.pt").read_bytes()
    again = atomic_torch_save(content, tmp_path / "b" / "shard.pt").read_bytes()  # another temp name
    assert first == again
    torch.testing.assert_close(
        torch.load(tmp_path / "a" / "shard.pt", weights_only=True)["latents"], content["latents"]
    )
    loaded = torch.load(tmp_path / "b" / "shard.pt", mmap=True, weights_only=True)  # memory maps as before
    assert loaded["seed"] == 3
