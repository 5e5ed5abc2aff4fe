"""Distillation set: shards of separated latents, manifest, resume after a kill, rank sharding, the Dataset."""

from __future__ import annotations

import json

import pytest
import torch
from support import tiny_denoiser

from monai_disc.distributed import resolve_rank as distributed_rank
from monai_disc.engines.distill import DistillationSet, distill_seed, write_distillation_set
from monai_disc.inferers.mask_ldm import MaskLDMSampler
from monai_disc.inferers.separated import SeparatedConditionInferer

torch.set_num_threads(1)

SHAPE = (3, 8, 8)
SIZE = 32


def _sampler() -> MaskLDMSampler:
    return MaskLDMSampler("ddim", num_inference_steps=2, progress=False)


def _write(root, net, **kw):
    args = dict(n_sets=5, latent_shape=SHAPE, image_size=SIZE, shard_size=2, seed=3, sampler=_sampler(), batch_size=2)
    args.update(kw)
    return write_distillation_set(root, net, progress=False, **args)


class KillAfter:
    """Forward hook that raises after `n` denoiser calls: a job killed mid-run."""

    def __init__(self, module, n: int) -> None:
        self.calls = 0
        self.n = n
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, out):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt("killed")


def test_sets_are_the_separated_latents_of_their_seeds_in_shards_with_a_manifest(tmp_path, capsys):
    net = tiny_denoiser()
    summary = _write(tmp_path, net)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.csv",
        "manifest.json",
        "settings.json",
        "shard_00000.pt",
        "shard_00001.pt",
        "shard_00002.pt",
    ]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [(s["start"], s["stop"]) for s in manifest["shards"]] == [(0, 2), (2, 4), (4, 5)]
    assert manifest["num_classes"] == 4 and manifest["latent_shape"] == list(SHAPE)
    rows = (tmp_path / "manifest.csv").read_text().splitlines()
    assert rows[0] == "set_index,seed,shard" and rows[5] == f"4,{distill_seed(3, 4)},shard_00002.pt"
    assert summary["sets"] == 5 and summary["written"] == ["shard_00000.pt", "shard_00001.pt", "shard_00002.pt"]
    assert "sets/s" in capsys.readouterr().out

    data = DistillationSet(tmp_path)
    assert len(data) == 5 and data.num_classes == 4 and data.image_size == (SIZE, SIZE)
    item = data[3]
    assert item["index"] == 3 and item["latents"].shape == (4, *SHAPE) and item["latents"].dtype == torch.float32
    # set 3 is its seed's noise under each uniform mask, whatever batch it was written in (stored as float16)
    noise = MaskLDMSampler.make_noise([distill_seed(3, 3)], SHAPE)
    expected = SeparatedConditionInferer(_sampler()).separated_latents(noise, net, (SIZE, SIZE))[0]
    torch.testing.assert_close(item["latents"], expected, rtol=2e-3, atol=2e-3)
    assert (expected[0] - expected[3]).abs().mean() > 0.1  # the four labels give four different latents
    shard = torch.load(tmp_path / "shard_00001.pt", weights_only=True)
    assert shard["latents"].dtype == torch.float16 and shard["indices"].tolist() == [2, 3]
    assert shard["seeds"].tolist() == [distill_seed(3, 2), distill_seed(3, 3)]
    assert distill_seed(3, 2) != distill_seed(3, 3) != distill_seed(4, 3)


def test_a_killed_run_resumes_without_redoing_finished_shards_and_gives_the_same_set(tmp_path):
    net = tiny_denoiser()
    full = tmp_path / "full"
    _write(full, net)
    killed = tmp_path / "killed"
    kill = KillAfter(net, 2 * 2 + 1)  # 2 steps per batch: shards 0 and 1 finish, shard 2 dies
    with pytest.raises(KeyboardInterrupt):
        _write(killed, net)
    kill.handle.remove()
    assert sorted(p.name for p in killed.glob("shard_*")) == ["shard_00000.pt", "shard_00001.pt"]
    assert not list(killed.glob(".*tmp"))  # no half-written file left behind
    before = {p.name: p.stat().st_mtime_ns for p in killed.glob("shard_*")}

    count = KillAfter(net, 10**9)
    summary = _write(killed, net)
    assert summary["skipped"] == ["shard_00000.pt", "shard_00001.pt"] and summary["written"] == ["shard_00002.pt"]
    assert count.calls == 2  # one batch of the last shard, 2 DDIM steps
    assert {p.name: p.stat().st_mtime_ns for p in killed.glob("shard_0000[01].pt")} == before
    for a, b in zip(DistillationSet(full), DistillationSet(killed)):
        torch.testing.assert_close(a["latents"], b["latents"], rtol=0, atol=0)


def test_ranks_write_disjoint_shards_that_together_make_the_whole_set(tmp_path, monkeypatch):
    net = tiny_denoiser()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed_rank() == (1, 2)
    one = _write(tmp_path, net)
    assert one["written"] == ["shard_00001.pt"]
    with pytest.raises(FileNotFoundError, match="1 of 3 shards|2 of 3 shards"):
        DistillationSet(tmp_path)
    partial = DistillationSet(tmp_path, allow_partial=True)
    assert len(partial) == 2 and [partial[i]["index"] for i in range(2)] == [2, 3]
    zero = _write(tmp_path, net, rank=0)
    assert zero["written"] == ["shard_00000.pt", "shard_00002.pt"]
    single = tmp_path / "single"
    _write(single, net, rank=0, world_size=1)
    for a, b in zip(DistillationSet(tmp_path), DistillationSet(single)):
        assert a["index"] == b["index"]
        torch.testing.assert_close(a["latents"], b["latents"], rtol=0, atol=2e-3)
    with pytest.raises(ValueError, match="rank"):
        distributed_rank(2, 2)


def test_a_folder_of_another_set_is_refused_naming_the_settings_and_overwrite_starts_over(tmp_path):
    net = tiny_denoiser()
    _write(tmp_path, net, n_sets=2)
    with pytest.raises(ValueError, match=r"other settings \(n_sets: 2 -> 5\)"):
        _write(tmp_path, net)
    assert sorted(p.name for p in tmp_path.glob("shard_*")) == ["shard_00000.pt"]  # nothing was touched
    summary = _write(tmp_path, net, overwrite=True)
    assert summary["written"] == ["shard_00000.pt", "shard_00001.pt", "shard_00002.pt"]
    assert DistillationSet(tmp_path).manifest["n_sets"] == 5
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        DistillationSet(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="image_size"):
        write_distillation_set(tmp_path / "x", net, 2, SHAPE, progress=False)


def test_rank_comes_from_an_initialised_process_group_before_the_environment(tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert distributed_rank() == (0, 1)
        assert distributed_rank(rank=0, world_size=4) == (0, 4)
    finally:
        dist.destroy_process_group()
    assert distributed_rank() == (2, 3)
