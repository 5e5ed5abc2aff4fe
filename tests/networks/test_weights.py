"""load_weights: the one weight loader; it returns the network (for config expressions) and names bad files."""

from __future__ import annotations

import pytest
import torch

from monai_disc.networks import WeightsError, load_weights


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def test_loads_the_file_and_returns_the_same_module_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    source = _net()
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = _net().train()
    assert load_weights(target, tmp_path / "w.pt") is target and not target.training
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))


def test_unwraps_checkpoint_dictionaries_and_wrapper_prefixes(tmp_path):
    source = _net()
    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": wrapped, "epoch": 3}, tmp_path / "ckpt.pt")
    target = load_weights(_net(), tmp_path / "ckpt.pt")
    assert torch.equal(target[0].weight, source[0].weight)


def test_bad_files_are_named_with_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot load .*missing\.pt: no such file"):
        load_weights(_net(), tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match=r"cannot load .*junk\.pt: not a PyTorch weight file"):
        load_weights(_net(), tmp_path / "junk.pt")
    torch.save(torch.nn.Linear(5, 5).state_dict(), tmp_path / "other.pt")
    with pytest.raises(WeightsError, match=r"cannot load .*other\.pt: does not fit Sequential: .*'0\.weight'"):
        load_weights(_net(), tmp_path / "other.pt")
