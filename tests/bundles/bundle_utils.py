"""Helpers for bundle tests: real `python -m monai.bundle run` subprocesses, the specification's fields, and
configs initialised in-process as `monai.bundle run` would (in a one-process group where DDP is configured)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import monai
import pytest
import torch
from monai.bundle import ConfigWorkflow

__all__ = [
    "BUNDLES",
    "BUNDLE_NAMES",
    "METADATA_FIELDS",
    "README_SECTIONS",
    "REPO",
    "TENSOR_FIELDS",
    "bundle_run",
    "bundle_tool",
    "check_workflow",
    "missing_metadata",
    "readme_sections",
    "single_rank_world",
    "zoo_metadata_problems",
]

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
BUNDLE_NAMES = ("carcinonet", "gleason_ldm", "gleason_ldm_disc", "transmil")
# The model zoo's README order (e.g. spleen_ct_segmentation): these level-2 headings, in this order.
README_SECTIONS = (
    "Model Overview",
    "Data",
    "Training configuration",
    "Input and output formats",
    "Performance",
    "MONAI Bundle Commands",
    "TorchScript",
    "Limitations",
    "References",
    "License",
)
_VERSION = re.compile(r"^\d+(\.\d+){1,2}$")


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


def zoo_metadata_problems(meta: dict) -> list[str]:
    """What the model zoo's CI would reject in a metadata.json: malformed versions, or packages it cannot install.

    The zoo's CI pip-installs `required_packages_version` from the package index, so every entry must be a real
    distribution with a plain version (installed here), and `monai_disc`, which is not on the index, must not be
    listed (the README says `pip install .` of this repository). `optional_packages_version` is not used either:
    MONAI 1.6 reads it as a deprecated alias and replaces `required_packages_version` with it on load.
    """
    problems = missing_metadata(meta)
    for field in ("version", "monai_version", "pytorch_version", "numpy_version"):
        if not _VERSION.match(str(meta.get(field, ""))):
            problems.append(f"{field} is not a version: {meta.get(field)!r}")
    if "optional_packages_version" in meta:
        problems.append("optional_packages_version (MONAI renames it to required_packages_version on load)")
    for name, version in meta.get("required_packages_version", {}).items():
        if name == "monai_disc":
            problems.append("monai_disc in required_packages_version (not on the package index)")
            continue
        if not _VERSION.match(str(version)):
            problems.append(f"required package {name}: version {version!r} is not a plain version")
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"required package {name} is not a distribution installed here")
    inputs = list(meta.get("network_data_format", {}).get("inputs", {}))
    if inputs[:1] != ["image"]:
        problems.append(f"the first input is {inputs[:1]}, not 'image' (MONAI Label and verify_net_in_out read it)")
    return problems


def readme_sections(path: Path) -> list[str]:
    """The level-2 headings of a bundle README, in order."""
    return [line[3:].strip() for line in path.read_text().splitlines() if line.startswith("## ")]


def bundle_tool(bundle: str, tool: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one of MONAI's bundle tools (`python -m monai.bundle <tool> ...`) in the bundle folder, as the model
    zoo's CI does; returns the finished process (its return code is the caller's to judge)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "monai.bundle", tool, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=BUNDLES / bundle)


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


def check_workflow(
    config_file: str | list[str], workflow_type: str, meta_file: Path | str, **override
) -> ConfigWorkflow:
    """Initialise a config as `monai.bundle run` does and require every property of its workflow type.

    The workflow is finalised and MONAI's global seed reset afterwards, so a config's `set_determinism` does
    not leak into later tests.

    Args:
        config_file: one config path, or a list merged in order (e.g. train + multi-GPU).
        workflow_type: "train" or "infer".
        meta_file: the bundle's metadata.json.
        override: config ids and their values, as ``--id value`` on the command line.

    Returns:
        the finalised workflow, for checks of its parsed parts.
    """
    wf = ConfigWorkflow(
        config_file=config_file, meta_file=str(meta_file), logging_file=False, workflow_type=workflow_type, **override
    )
    wf.initialize()
    try:
        assert wf.check_properties() == []
    finally:
        wf.finalize()
        monai.utils.set_determinism(seed=None)
    return wf


@contextmanager
def single_rank_world(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Rank 0 of a one-process world on a free local port, as torchrun describes it, for a multi-GPU config.

    On exit the process group the body started is destroyed (through ignite when ignite adopted it, so ignite
    forgets it too), so later tests start without one.
    """
    import ignite.distributed as idist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MASTER_PORT", str(port))
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            idist.finalize()  # destroys the group when ignite adopted it, and forgets it
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
