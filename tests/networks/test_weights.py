"""load_network: a weight file into a network, returned for config expressions; bad files named in one line."""

from __future__ import annotations

import pytest
import torch

from monai_disc.networks import load_network


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def test_loads_the_file_and_returns_the_same_module(tmp_path):
    torch.manual_seed(0)
    source = _net()
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = _net()
    assert load_network(target, tmp_path / "w.pt") is target
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))


def test_loads_one_entry_of_a_checkpoint_dictionary(tmp_path):
    source = _net()
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    target = load_network(_net(), tmp_path / "ckpt.pt", key="model")
    assert torch.equal(target[0].weight, source[0].weight)
    with pytest.raises(ValueError, match=r"ckpt\.pt: no entry 'network'"):
        load_network(_net(), tmp_path / "ckpt.pt", key="network")


def test_bad_files_are_named_with_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot load .*missing\.pt: no such file"):
        load_network(_net(), tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"cannot load .*junk\.pt: not a PyTorch checkpoint"):
        load_network(_net(), tmp_path / "junk.pt")
    torch.save(torch.nn.Linear(5, 5).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"cannot load .*other\.pt into Sequential: .*0\.weight"):
        load_network(_net(), tmp_path / "other.pt")
