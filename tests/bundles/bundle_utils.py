"""Helpers for bundle tests: real `python -m monai.bundle run` subprocesses and the specification's fields."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"

# Fields the MONAI bundle specification (meta_schema_20240725) makes mandatory.
METADATA_FIELDS = (
    "schema",
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
TENSOR_FIELDS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")


def missing_metadata(meta: dict) -> list[str]:
    """Mandatory fields absent from a bundle's metadata, as dotted paths."""
    missing = [f for f in METADATA_FIELDS if f not in meta]
    if meta.get("version") not in meta.get("changelog", {}):
        missing.append("changelog[version]")
    fmt = meta.get("network_data_format", {})
    for side in ("inputs", "outputs"):
        if not fmt.get(side):
            missing.append(f"network_data_format.{side}")
        for name, spec in fmt.get(side, {}).items():
            missing += [f"network_data_format.{side}.{name}.{f}" for f in TENSOR_FIELDS if f not in spec]
    return missing


def bundle_run(bundle: str, configs: list[str], *args: str, torchrun: int = 0, timeout: int = 600) -> str:
    """Run a bundle workflow in a fresh process exactly as a user would; return its output, raise on failure."""
    root = BUNDLES / bundle
    config = (
        str(root / "configs" / configs[0]) if len(configs) == 1 else str([str(root / "configs" / c) for c in configs])
    )
    launcher = [sys.executable, "-m", "monai.bundle"]
    if torchrun:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(torchrun),
            "-m",
            "monai.bundle",
        ]
    cmd = [
        *launcher,
        "run",
        "--config_file",
        config,
        "--meta_file",
        str(root / "configs" / "metadata.json"),
        "--logging_file",
        str(root / "configs" / "logging.conf"),
        "--bundle_root",
        str(root),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"bundle run failed ({proc.returncode}): {' '.join(cmd)}\n{out[-6000:]}")
    return out
