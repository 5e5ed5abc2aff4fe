"""Real SICAPv2 slides and synthetic slides read as bags through one interface."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from monai_disc.apps.generate_slides import generate_slides
from monai_disc.data.tilesets import BagDataset, load_sicapv2_bags, load_synthetic_bags, tile_loader
from monai_disc.labels import LABEL_COLORS
from monai_disc.masks import ShapeBank, plan_slide

SIZE = 16
BAG_KEYS = {"slide_id", "tiles", "masks", "label", "primary", "secondary", "source"}
# slide -> (Gleason primary, secondary) and its tiles
SLIDES = {"16B0001851": (3, 4), "18B0006169": (0, 0)}
TILES = {
    "16B0001851": [
        "16B0001851_Block_Region_1_0_0_xini_1_yini_2",
        "16B0001851_Block_Region_1_0_1_xini_3_yini_4",
        "16B0001851_Block_Region_2_0_0_xini_5_yini_6",
    ],
    "18B0006169": ["18B0006169_Block_Region_1_0_0_xini_7_yini_8", "18B0006169_Block_Region_1_1_0_xini_9_yini_0"],
}


def _make_sicapv2(root, slides=SLIDES):
    """A hand-made SICAPv2 layout: 5 tiles of 2 slides, tile colours numbered so a loaded tile can be checked."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, value = [], 0
    for names in TILES.values():
        for name in names:
            value += 40
            Image.fromarray(np.full((SIZE, SIZE, 3), value, np.uint8)).save(
                root / "images" / f"{name}.jpg", quality=100
            )
            Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(root / "masks" / f"{name}.jpg")
            rows.append({"image_name": name, "NC": 1, "G3": 0, "G4": 0, "G5": 0, "G4C": 0})
    (root / "partition" / "Test").mkdir(parents=True)
    pd.DataFrame(rows).to_excel(root / "partition" / "Test" / "Train.xlsx", index=False)
    sheet = [
        {"slide_id": s, "patient_id": i, "Gleason_primary": p, "Gleason_secondary": q}
        for i, (s, (p, q)) in enumerate(slides.items())
    ]
    pd.DataFrame(sheet).to_excel(root / "wsi_labels.xlsx", index=False)
    return root


class ColourGenerator:
    """Tiles in the label colours: a real TileGenerator, enough to write synthetic bags."""

    name = "colour"

    def sample(self, masks, seeds):
        lut = torch.tensor([LABEL_COLORS[k] for k in sorted(LABEL_COLORS)], dtype=torch.float32) / 127.5 - 1
        return lut[masks].permute(0, 3, 1, 2)


def _bank() -> ShapeBank:
    """Two shapes: one label, and three labels (a diagonal, a band, the rest)."""
    masks = [np.zeros((SIZE, SIZE), np.int64), np.eye(SIZE, dtype=np.int64) * 2 + (np.arange(SIZE) > 10)]
    return ShapeBank.from_masks(masks, ["a", "b"], min_fraction=0)


@pytest.fixture()
def synthetic(tmp_path):
    bank = _bank()
    plans = [
        plan_slide(0, 0, bank, seed=1, slide_index=0, slide_id="synth_0000", n_tiles=(2, 2)),
        plan_slide(3, 2, bank, seed=1, slide_index=1, slide_id="synth_0001", n_tiles=(4, 4)),
    ]
    generate_slides(plans, tmp_path / "synth", ColourGenerator(), bank, progress=False)
    return tmp_path / "synth", plans


def test_real_bags_group_sheet_tiles_by_slide_with_slide_labels(tmp_path):
    root = _make_sicapv2(tmp_path / "sicap")
    bags = load_sicapv2_bags(root, "Test", "Train")
    assert [b["slide_id"] for b in bags] == list(TILES)
    first, second = bags
    assert set(first) == BAG_KEYS | {"patient_id"} and first["source"] == "real"
    assert first["tiles"] == [str(root / "images" / f"{n}.jpg") for n in TILES["16B0001851"]]
    assert first["masks"] == [str(root / "masks" / f"{n}.jpg") for n in TILES["16B0001851"]]
    np.testing.assert_array_equal(first["label"], [0, 1, 1, 0])  # Gleason 3 + 4 -> GG3, GG4
    assert (first["primary"], first["secondary"]) == (1, 2) and first["label"].dtype == np.float32
    np.testing.assert_array_equal(second["label"], [1, 0, 0, 0])
    assert len(second["tiles"]) == 2 and second["patient_id"] == "1"


def test_a_sheet_slide_without_slide_label_names_the_label_sheet(tmp_path):
    root = _make_sicapv2(tmp_path / "sicap", {"16B0001851": (3, 4)})
    with pytest.raises(ValueError, match=r"wsi_labels\.xlsx has no row for slide\(s\) \['18B0006169'\]"):
        load_sicapv2_bags(root)


def test_synthetic_bags_come_from_the_manifest_with_the_same_keys_as_real_ones(synthetic):
    out, plans = synthetic
    bags = load_synthetic_bags(out)
    assert [b["slide_id"] for b in bags] == ["synth_0000", "synth_0001"]
    assert set(bags[0]) == BAG_KEYS | {"generator"}
    assert [len(b["tiles"]) for b in bags] == [2, 4] and [len(b["masks"]) for b in bags] == [2, 4]
    assert bags[1]["tiles"][3] == str(out / "synth_0001" / "images" / "0003.png")
    np.testing.assert_array_equal(bags[1]["label"], [0, 0, 1, 1])
    assert (bags[1]["primary"], bags[1]["secondary"]) == (3, 2)
    assert {b["source"] for b in bags} == {"synthetic"} and {b["generator"] for b in bags} == {"colour"}
    for t, mask in enumerate(plans[1].masks(_bank())):
        np.testing.assert_array_equal(np.asarray(Image.open(bags[1]["masks"][t])), mask)


def test_bag_dataset_reads_real_and_synthetic_bags_alike(tmp_path, synthetic):
    real = load_sicapv2_bags(_make_sicapv2(tmp_path / "sicap"))
    bags = real + load_synthetic_bags(synthetic[0])
    paths = BagDataset(bags)
    assert len(paths) == 4 and paths[3]["tiles"] == bags[3]["tiles"]
    data = BagDataset(bags, transform=tile_loader())
    sample = data[0]
    assert sample["tiles"].shape == (3, 3, SIZE, SIZE) and sample["tiles"].dtype == torch.float32
    expected = torch.tensor([40.0, 80.0, 120.0]) / 127.5 - 1  # the tiles' grey values, JPEG q100 within 1 level
    assert torch.allclose(sample["tiles"].mean(dim=(1, 2, 3)), expected, atol=1.5 / 127.5)
    assert torch.equal(sample["label"], torch.tensor([0.0, 1.0, 1.0, 0.0])) and sample["source"] == "real"
    synth = data[3]
    assert synth["tiles"].shape == (4, 3, SIZE, SIZE) and synth["source"] == "synthetic"
    assert torch.equal(synth["label"], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert data[2]["tiles"].min() >= -1 and data[2]["tiles"].max() <= 1
    resized = BagDataset(bags[:1], transform=tile_loader(8))[0]["tiles"]
    assert resized.shape == (3, 3, 8, 8)


def test_a_synthetic_slide_missing_tiles_is_reported_with_its_folder(synthetic):
    out, _ = synthetic
    (out / "synth_0001" / "images" / "0002.png").unlink()
    with pytest.raises(ValueError, match=r"synth_0001: 3 tiles and 4 masks, but .*manifest\.csv line 3 says 4"):
        load_synthetic_bags(out)
    (out / "manifest.csv").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.csv"):
        load_synthetic_bags(out)


def test_bag_without_tiles_is_refused():
    with pytest.raises(ValueError, match=r"bag 0 \(slide s\) has no tile"):
        BagDataset([{"slide_id": "s", "tiles": [], "label": [1, 0, 0, 0]}])
