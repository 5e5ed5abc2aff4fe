"""compare_generators: one row per generator, fidelity that tells a right tile from a wrong one, FID, resuming;
held_out_masks: multi-label held-out masks and crops that keep their labels."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from monai_disc.apps.compare import (
    compare_generators,
    format_comparison,
    held_out_masks,
    ruler_fid,
    run_comparison,
)
from monai_disc.bundles import CARCINONET_WEIGHTS as RULER_WEIGHTS
from monai_disc.data import load_sicapv2
from monai_disc.inferers import (
    DEFAULT_NUM_INFERENCE_STEPS,
    GENERATORS,
    LDMGenerator,
    MaskLDMSampler,
    SeparatedConditionInferer,
)
from monai_disc.labels import colorize
from monai_disc.networks import carcinonet_toy, mask_ldm_toy, vq_f4_toy
from monai_disc.transforms import sicapv2_tile_transforms

torch.set_num_threads(1)

# One solid colour per label, far apart in [-1, 1]^3, so a nearest-colour ruler reads labels back exactly.
PALETTE = torch.tensor([[0.8, 0.8, 0.8], [-0.8, 0.6, -0.6], [0.7, -0.7, -0.8], [-0.7, -0.8, 0.7]])


class PaletteRuler(nn.Module):
    """A ruler that knows the painter's colours: logits are minus the distance to each label's colour;
    features are per-channel means and standard deviations and the nearest-colour label shares."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("palette", PALETTE.clone())

    def forward(self, x: Tensor) -> Tensor:
        return -((x[:, None] - self.palette[None, :, :, None, None]) ** 2).sum(2)

    def encode(self, x: Tensor) -> Tensor:
        shares = torch.nn.functional.one_hot(self(x).argmax(1), 4).float().mean((1, 2))
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), shares], dim=1)


def _seed_noise(seeds: Sequence[int], size: int) -> Tensor:
    return torch.stack([torch.randn(3, size, size, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def paint(masks: Tensor, seeds: Sequence[int]) -> Tensor:
    """The perfect generator: each label in its colour, plus a little seed-dependent noise."""
    return PALETTE[masks].permute(0, 3, 1, 2) + 0.05 * _seed_noise(seeds, masks.shape[-1])


def constant(masks: Tensor, seeds: Sequence[int]) -> Tensor:
    """A generator that ignores the mask: NC's colour everywhere."""
    return PALETTE[torch.zeros_like(masks)].permute(0, 3, 1, 2) + 0.05 * _seed_noise(seeds, masks.shape[-1])


def _masks(n: int = 8, size: int = 16) -> Tensor:
    """n masks with two to four labels each, every label in the set."""
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    half = size // 2
    for i in range(n):
        labels = torch.randperm(4, generator=g)[: 2 + i % 3]
        quads = [labels[j % len(labels)] for j in range(4)]
        masks[i, :half, :half], masks[i, :half, half:] = quads[0], quads[1]
        masks[i, half:, :half], masks[i, half:, half:] = quads[2], quads[3]
    return masks


def _randomised(net: nn.Module, seed: int) -> nn.Module:
    """A toy denoiser with its zero-initialised layers randomised, so different weights give different tiles."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return net.eval()


def _rows(result: dict) -> dict:
    return {n: {k: v for k, v in row.items() if k != "seconds_per_tile"} for n, row in result["generators"].items()}


@pytest.fixture(scope="module")
def ldm_generators():
    torch.manual_seed(0)
    autoencoder = vq_f4_toy().eval()
    sd, disc = _randomised(mask_ldm_toy(), 1), _randomised(mask_ldm_toy(), 2)

    def sampler() -> MaskLDMSampler:
        return MaskLDMSampler(num_inference_steps=2, progress=False)

    return {
        "SD": LDMGenerator(sampler(), autoencoder, sd, name="SD"),
        "SD-SC": LDMGenerator(SeparatedConditionInferer(sampler()), autoencoder, sd, name="SD-SC"),
        "SD-DISC": LDMGenerator(sampler(), autoencoder, disc, name="SD-DISC"),
    }


def test_table_has_one_row_per_generator_with_finite_numbers(ldm_generators, tmp_path):
    torch.manual_seed(0)
    ruler = carcinonet_toy().eval()
    masks = _masks(4, 32)
    real = torch.rand(6, 3, 32, 32) * 2 - 1
    result = compare_generators(ldm_generators, masks, [0, 1, 2, 3], ruler, real, tmp_path, batch_size=3)

    assert list(ldm_generators) == ["SD", "SD-SC", "SD-DISC"]  # CoTrain has no weights: skipped
    assert result["order"] == ["SD", "SD-SC", "SD-DISC"]
    for row in result["generators"].values():
        numbers = [row["miou"], row["pixel_accuracy"], row["fid"], row["seconds_per_tile"], *row["iou"]]
        assert all(math.isfinite(v) for v in numbers)
        assert row["seconds_per_tile"] > 0 and row["fid"] >= 0 and 0 <= row["miou"] <= 1
        assert sum(map(sum, row["confusion_matrix"])) == masks.numel()
    assert result["feature_dim"] == 256 and result["num_real_tiles"] == 6
    table = format_comparison(result).splitlines()
    head = "| generator | mIoU | IoU NC | GG3 | GG4 | GG5 | pixel acc | leak | FID | evaluations/tile | s/tile |"
    assert table[0] == head
    assert [line.split(" | ")[0] for line in table[2:5]] == ["| SD", "| SD-SC", "| SD-DISC"]
    assert "2 PLMSScheduler steps" in table[-1] and "4 held-out masks of 32x32 px" in table[-1]
    # counted, not computed: PLMS with 2 steps calls the denoiser 3 times per tile; SC once per label present
    labels = sum(len(torch.unique(m[::4, ::4])) for m in masks) / len(masks)
    assert result["generators"]["SD"]["network_evaluations_per_tile"] == 3.0
    assert result["generators"]["SD-SC"]["network_evaluations_per_tile"] == pytest.approx(3.0 * labels)
    assert result["generators"]["SD"]["solver"] == "PLMSScheduler"
    # SD-SC and SD-DISC really are other generators: different tiles, different features
    fids = [result["generators"][n]["fid"] for n in result["order"]]
    assert len(set(fids)) == 3


def test_same_seeds_give_same_table_and_other_seeds_do_not(ldm_generators, tmp_path):
    torch.manual_seed(0)
    ruler = carcinonet_toy().eval()
    masks, real = _masks(3, 32), torch.rand(4, 3, 32, 32) * 2 - 1
    runs = [
        compare_generators(ldm_generators, masks, seeds, ruler, real, tmp_path / str(i), batch_size=2)
        for i, seeds in enumerate([[5, 6, 7], [5, 6, 7], [8, 9, 10]])
    ]
    assert _rows(runs[0]) == _rows(runs[1])
    assert format_comparison(runs[0], timing=False) == format_comparison(runs[1], timing=False)
    assert runs[0]["generators"]["SD"]["fid"] != runs[2]["generators"]["SD"]["fid"]


def test_perfect_generator_scores_miou_one_and_constant_one_lower(tmp_path):
    masks, seeds = _masks(), list(range(8))
    real = paint(masks, seeds)  # the painter's own tiles: its FID must vanish
    result = compare_generators(
        {"paint": paint, "constant": constant}, masks, seeds, PaletteRuler(), real, tmp_path, batch_size=3
    )
    perfect, flat = result["generators"]["paint"], result["generators"]["constant"]
    assert perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0 and perfect["iou"] == [1.0] * 4
    assert perfect["fid"] == pytest.approx(0.0, abs=1e-6)
    nc_share = float((masks == 0).float().mean())
    assert flat["iou"] == pytest.approx([nc_share, 0.0, 0.0, 0.0])
    assert flat["miou"] == pytest.approx(nc_share / 4) and flat["pixel_accuracy"] == pytest.approx(nc_share)
    assert flat["fid"] > 0.1


def test_fid_of_a_set_against_itself_is_zero_and_a_shift_costs_its_square():
    features = torch.randn(12, 5, generator=torch.Generator().manual_seed(0)).double()
    assert ruler_fid(features, features) == pytest.approx(0.0, abs=1e-8)
    # equal covariances: FID is the squared distance of the means, 5 dimensions shifted by 1
    assert ruler_fid(features + 1.0, features) == pytest.approx(5.0, abs=1e-6)
    assert math.isnan(ruler_fid(features[:1], features))


def test_files_written(tmp_path):
    masks, seeds = _masks(8), list(range(8))
    real = paint(masks, [s + 100 for s in seeds])  # the real tiles under the masks: painted with other noise
    result = compare_generators(
        {"SD": constant, "SD-SC": paint},
        masks,
        seeds,
        PaletteRuler(),
        paint(masks, seeds),
        tmp_path,
        references={"real": real},
    )
    table = (tmp_path / "compare.md").read_text()
    assert format_comparison(result) in table and "| SD-SC | 1.000 |" in table
    assert "| real (reference) | 1.000 |" in table and table.count("\n| ") == 4  # header + 3 rows
    stored = json.loads((tmp_path / "compare.json").read_text())
    assert stored["order"] == ["SD", "SD-SC"] and stored["generators"]["SD-SC"]["miou"] == 1.0
    assert stored["references"]["real"]["miou"] == 1.0 and stored["references"]["real"]["seconds_per_tile"] is None
    assert stored["seeds"] == seeds and stored["num_masks"] == 8
    grid = np.asarray(Image.open(tmp_path / "compare_grid.png").convert("RGB"))
    from monai_disc.visualize import legend, text_size

    cell, pad = 128, 2  # 16 px masks drawn 8x larger; 6 rows; mask | real | SD | SD-SC; titles; the colour legend
    header = int(1.4 * text_size(cell))
    below = legend(4 * cell + 5 * pad, text_size(cell)).height
    assert grid.shape == (header + 6 * cell + 7 * pad + below, 4 * cell + 5 * pad, 3)
    # row 1 (mask 1), mask pixel (0, 15): the mask column shows its colour, the painter's column its paint
    top, left = header + 2 * pad + cell, 15 * 8 + 4
    assert (grid[top + 4, pad + left] == colorize(masks[1].numpy())[0, 15]).all()
    painted = ((PALETTE[masks[1, 0, 15]] + 1.0) * 127.5).numpy()
    assert np.abs(grid[top + 4, 2 * pad + cell + left] - painted).max() < 40  # real
    assert np.abs(grid[top + 4, 4 * pad + 3 * cell + left] - painted).max() < 40  # SD-SC
    assert np.abs(grid[top + 4, 3 * pad + 2 * cell + left] - (PALETTE[0] + 1.0).numpy() * 127.5).max() < 40  # SD


def test_undefined_numbers_show_as_na_and_null(tmp_path):
    masks = _masks(1)  # one tile: no covariance, no FID
    result = compare_generators({"paint": paint}, masks, [0], PaletteRuler(), paint(_masks(3), [0, 1, 2]), tmp_path)
    assert math.isnan(result["generators"]["paint"]["fid"])
    assert json.loads((tmp_path / "compare.json").read_text())["generators"]["paint"]["fid"] is None
    assert "| 1.000 | n/a |" in format_comparison(result)


class CountingPainter:
    """The painter, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        self.calls += 1
        return paint(masks, seeds)


def test_resume_reuses_finished_generators_and_only_when_asked(tmp_path):
    masks, seeds = _masks(4), list(range(4))
    painter = CountingPainter()
    first = compare_generators({"paint": painter}, masks, seeds, PaletteRuler(), paint(masks, seeds), tmp_path)
    assert painter.calls == 1 + 1  # warm-up, one batch
    again = compare_generators(
        {"paint": painter}, masks, seeds, PaletteRuler(), paint(masks, seeds), tmp_path, resume=True
    )
    assert painter.calls == 2 and again["generators"] == first["generators"]
    compare_generators(
        {"paint": painter}, masks, [9, 9, 9, 9], PaletteRuler(), paint(masks, seeds), tmp_path, resume=True
    )
    assert painter.calls == 4  # other seeds: redone
    compare_generators({"paint": painter}, masks, seeds, PaletteRuler(), paint(masks, seeds), tmp_path)
    assert painter.calls == 6  # resume not asked: redone


def test_bad_generator_output_names_the_generator(tmp_path):
    masks = _masks(2)

    def half(masks: Tensor, seeds: Sequence[int]) -> Tensor:
        return paint(masks, seeds)[:, :, :8]

    with pytest.raises(ValueError, match="'broken'"):
        compare_generators({"broken": half}, masks, [0, 1], PaletteRuler(), paint(masks, [0, 1]), tmp_path)
    with pytest.raises(ValueError, match="one seed per mask"):
        compare_generators({"paint": paint}, masks, [0], PaletteRuler(), paint(masks, [0, 1]), tmp_path)


# ----------------------------------------------------------------------------------------------
# held_out_masks on a hand-made SICAPv2 layout
# ----------------------------------------------------------------------------------------------
SICAP_VALUES = np.array([0, 3, 4, 5], dtype=np.uint8)


def _write_sicapv2(root, label_maps: dict[str, np.ndarray]) -> None:
    """images/, masks/ (JPEG, SICAPv2 values) and partition/Test/Test.xlsx for 32 px label maps."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "partition" / "Test").mkdir(parents=True)
    colours = np.array([[230, 200, 220], [150, 60, 160], [90, 40, 120], [60, 20, 90]], dtype=np.uint8)
    for name, labels in label_maps.items():
        Image.fromarray(colours[labels]).save(root / "images" / f"{name}.jpg", quality=100, subsampling=0)
        Image.fromarray(SICAP_VALUES[labels]).save(root / "masks" / f"{name}.jpg", quality=100)
    rows = [
        {"image_name": n, "NC": int((m == 0).any()), "G3": int((m == 1).any()), "G4": int((m == 2).any()),
         "G5": int((m == 3).any()), "G4C": 0}
        for n, m in label_maps.items()
    ]  # fmt: skip
    pd.DataFrame(rows).to_excel(root / "partition" / "Test" / "Test.xlsx", index=False)


@pytest.fixture(scope="module")
def sicap_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sicap")
    flat = np.zeros((32, 32), dtype=np.int64)
    halves = flat.copy()
    halves[:, 16:] = 2
    corner = flat.copy()
    corner[24:, 24:] = 3  # 6 % of the tile: the top-left 16 px crop would lose it
    quads = flat.copy()
    quads[:16, 16:], quads[16:, :16], quads[16:, 16:] = 1, 2, 3
    _write_sicapv2(root, {"A_flat": flat, "B_halves": halves, "C_corner": corner, "D_quads": quads})
    return root


def test_held_out_masks_most_labels_first_and_single_label_masks_left_out(sicap_root):
    masks, tiles = held_out_masks(sicap_root, 10)
    assert masks.shape == (3, 32, 32) and tiles.shape == (3, 3, 32, 32)
    assert [sorted(torch.unique(m).tolist()) for m in masks] == [[0, 1, 2, 3], [0, 2], [0, 3]]  # D, B, C
    assert tiles.min() >= -1 and tiles.max() <= 1
    assert held_out_masks(sicap_root, 1)[0].shape == (1, 32, 32)


def test_held_out_crops_keep_two_labels_and_match_their_tiles(sicap_root):
    masks, tiles = held_out_masks(sicap_root, 10, size=16)
    full = [sicapv2_tile_transforms()(d) for d in load_sicapv2(sicap_root, "Test", "Test")]
    corner, quads = (full[i]["mask"][0].long().as_subclass(Tensor) for i in (2, 3))
    assert torch.equal(masks[0], quads[8:24, 8:24])  # the centre crop holds all four labels evenly
    assert sorted(torch.unique(masks[1]).tolist()) == [0, 2]
    assert torch.equal(masks[2], corner[16:32, 16:32])  # the crop that keeps GG5
    assert torch.equal(tiles[0], full[3]["image"][:, 8:24, 8:24].as_subclass(Tensor))
    assert torch.equal(tiles[2], full[2]["image"][:, 16:32, 16:32].as_subclass(Tensor))


def test_held_out_masks_errors_name_the_problem(sicap_root):
    with pytest.raises(ValueError, match="smaller than the crop size 64"):
        held_out_masks(sicap_root, 2, size=64)
    with pytest.raises(ValueError, match="no Test/Test mask holds 5 labels"):
        held_out_masks(sicap_root, 2, min_labels=5)


def _toy_bundles(root: Path, extra: dict[str, nn.Module]) -> Path:
    """A bundles folder with SD's autoencoder and a randomised denoiser, plus ``extra`` weights by path."""
    torch.manual_seed(0)
    weights = {
        "gleason_ldm/models/autoencoder.pt": vq_f4_toy(),
        "gleason_ldm/models/model.pt": _randomised(mask_ldm_toy(), 1),
        **extra,
    }
    for path, net in weights.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), root / path)
    return root


def test_run_comparison_uses_the_bundles_weights_and_skips_missing_ones(sicap_root, tmp_path):
    disc = {"gleason_ldm_disc/models/model_disc.pt": _randomised(mask_ldm_toy(), 2)}
    bundles = _toy_bundles(tmp_path / "bundles", disc)
    with pytest.raises(FileNotFoundError, match="carcinonet/models/model.pt"):
        run_comparison(sicap_root, tmp_path / "out", bundles_dir=bundles)
    (bundles / RULER_WEIGHTS).parent.mkdir(parents=True)
    torch.save(carcinonet_toy().state_dict(), bundles / RULER_WEIGHTS)

    result = run_comparison(
        sicap_root, tmp_path / "out", bundles_dir=bundles, num_masks=2, num_inference_steps=2, size=16, seed=3
    )
    assert result["order"] == ["SD", "SD-SC", "SD-DISC"]  # no CoTrain weights
    assert {row["network_evaluations_per_tile"] for row in result["generators"].values()} >= {3.0}
    assert result["num_masks"] == 2 and result["mask_size"] == [16, 16] and result["seeds"] == [3, 4]
    assert result["num_real_tiles"] == 4  # every tile's best crop
    assert list(result["references"]) == ["real", "real, autoencoded"]
    # the round trip through the (untrained) first stage is not the real tiles: its row is its own measurement
    assert result["references"]["real, autoencoded"]["fid"] != result["references"]["real"]["fid"]
    assert (tmp_path / "out" / "compare_grid.png").is_file() and (tmp_path / "out" / "compare.md").is_file()


def test_run_comparison_without_step_flags_draws_each_entry_at_its_own_solver(sicap_root, tmp_path):
    weights = {RULER_WEIGHTS: carcinonet_toy(), "gleason_ldm/models/model_gd2.pt": _randomised(mask_ldm_toy(), 3)}
    bundles = _toy_bundles(tmp_path / "bundles", weights)
    result = run_comparison(sicap_root, tmp_path / "out", bundles_dir=bundles, num_masks=2, size=16)
    rows = result["generators"]
    student = GENERATORS["gd2"].display
    assert rows["SD"]["network_evaluations_per_tile"] == DEFAULT_NUM_INFERENCE_STEPS + 1  # PLMS: steps + 1
    assert rows["SD"]["num_inference_steps"] == DEFAULT_NUM_INFERENCE_STEPS
    assert rows[student]["network_evaluations_per_tile"] == 2.0 and rows[student]["solver"].endswith("(leading)")
    assert result["steps"] is None and "each generator at its own solver" in format_comparison(result)
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["generators"][student]["network_evaluations_per_tile"] == 2.0


def test_run_comparison_guidance_changes_the_tiles_and_is_recorded(sicap_root, tmp_path):
    bundles = _toy_bundles(tmp_path / "bundles", {RULER_WEIGHTS: carcinonet_toy()})
    kwargs = {"bundles_dir": bundles, "num_masks": 2, "num_inference_steps": 2, "size": 16}
    plain = run_comparison(sicap_root, tmp_path / "plain", **kwargs)
    guided = run_comparison(sicap_root, tmp_path / "guided", guidance_scale=3.0, **kwargs)
    assert plain["guidance_scale"] == 1.0 and guided["guidance_scale"] == 3.0
    assert "steps, guidance 3;" in format_comparison(guided) and "steps, guidance" not in format_comparison(plain)
    assert guided["generators"]["SD"]["fid"] != plain["generators"]["SD"]["fid"]  # other tiles
