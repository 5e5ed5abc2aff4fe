"""The `monai-disc` command as a user runs it: toy data with preview, summary, clear errors."""

from __future__ import annotations

import subprocess
import sys

from monai_disc.data import load_sicapv2


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai_disc.cli", *args], capture_output=True, text=True, timeout=300)


def test_toy_data_writes_a_sicapv2_layout_every_partition_reads(tmp_path):
    out = tmp_path / "toy"
    proc = _cli("toy-data", "--out", str(out), "--slides", "6", "--tile-size", "64", "--preview")
    assert proc.returncode == 0, proc.stderr
    assert (out / "preview.png").stat().st_size > 10_000
    assert "slides per primary grade" not in proc.stderr and "GG5" in proc.stdout
    for partition in ("Test", "Val1", "Val2", "Val3", "Val4"):
        for split in ("Train", "Test"):
            items = load_sicapv2(out, partition, split)
            assert items and all(item["image"].endswith(".jpg") for item in items)
    summary = _cli("summary", str(out))
    assert summary.returncode == 0 and "Val4" in summary.stdout


def test_missing_root_is_an_error_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    proc = _cli("summary", str(missing))
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr
