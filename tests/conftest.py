"""Shared fixtures: one small procedural toy set per test session (the project's own data, never a download)."""

from __future__ import annotations

import pytest
import torch

# Two cores are shared with the bundle subprocesses: one intra-op thread avoids oversubscription.
torch.set_num_threads(1)


def pytest_configure(config):
    # `make test` runs everything; `pytest -m "not paper_size"` skips the full-size networks (about 12 GB, minutes)
    config.addinivalue_line("markers", "paper_size: full-size 512 px networks on the CPU (skip: -m 'not paper_size')")


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A 6-slide toy SICAPv2 set with 64 px tiles (and its PANDA-layout slides)."""
    from monai_disc.data.toy import make_toy_sicapv2

    return make_toy_sicapv2(tmp_path_factory.mktemp("toy"), n_slides=6, tile_size=64, seed=0)
