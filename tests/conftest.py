"""Shared fixtures: one small procedural toy set per test session (the project's own data, never a download)."""

from __future__ import annotations

import pytest
import torch

# Two cores are shared with the bundle subprocesses: one intra-op thread avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A 6-slide toy SICAPv2 set with 64 px tiles (and its PANDA-layout slides)."""
    from monai_disc.data.toy import make_toy_sicapv2

    return make_toy_sicapv2(tmp_path_factory.mktemp("toy"), n_slides=6, tile_size=64, seed=0)
