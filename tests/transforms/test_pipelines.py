"""Tile pipelines: files -> image in [-1, 1] and label mask; bad files raise errors naming them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from PIL import Image

from monai_disc.transforms import LoadPILImage, folder_tile_transforms, labels_at_size, sicapv2_tile_transforms

LABELS = np.zeros((16, 24), np.int64)
LABELS[:, 6:12], LABELS[:, 12:18], LABELS[:, 18:] = 1, 2, 3


def _messages(err: BaseException) -> str:
    """All messages along the cause chain (MONAI's Compose wraps errors in RuntimeError)."""
    out = []
    while err is not None:
        out.append(str(err))
        err = err.__cause__
    return "\n".join(out)


def _tile(path: Path, shape=(16, 24)) -> Path:
    rgb = np.zeros((*shape, 3), np.uint8)
    rgb[..., 0] = np.arange(shape[1], dtype=np.uint8)[None] * 10  # varies along width only
    rgb[..., 1] = 255
    Image.fromarray(rgb).save(path, quality=95)
    return path


def _sicap_mask(path: Path, labels=LABELS) -> Path:
    Image.fromarray(np.array([0, 3, 4, 5], np.uint8)[labels]).save(path, format="JPEG", quality=75)
    return path


def test_sicapv2_tile_and_noisy_jpeg_mask_become_model_inputs(tmp_path):
    item = {"image": str(_tile(tmp_path / "t.jpg")), "mask": str(_sicap_mask(tmp_path / "m.jpg")), "slide_id": "s"}
    out = sicapv2_tile_transforms()(item)
    image, mask = out["image"], out["mask"]
    assert isinstance(image, MetaTensor) and image.shape == (3, 16, 24) and image.dtype == torch.float32
    assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0
    assert float(image[1].mean()) == pytest.approx(1.0, abs=0.02)  # green 255 -> +1
    assert float(image[0, 8, 0]) == pytest.approx(-1.0, abs=0.05)  # red 0 at the left edge (rows are H)
    assert mask.shape == (1, 16, 24) and mask.dtype == torch.int64
    assert (mask[0].numpy() == LABELS).mean() > 0.8  # JPEG may shift 3 | 4 | 5 edges by a pixel
    np.testing.assert_array_equal(mask[0, :, :12].numpy(), LABELS[:, :12])  # the 0 | 3 edge is exact
    np.testing.assert_array_equal(mask[0, :, 20:].numpy(), 3)
    assert out["slide_id"] == "s" and mask.meta["filename_or_obj"] == item["mask"]


def test_pipeline_batches_through_a_monai_dataloader(tmp_path):
    items = [
        {
            "image": str(_tile(tmp_path / f"t{i}.jpg")),
            "mask": str(_sicap_mask(tmp_path / f"m{i}.jpg")),
            "label": np.eye(4, dtype=np.float32)[i],
        }
        for i in range(2)
    ]
    batch = next(iter(DataLoader(Dataset(items, sicapv2_tile_transforms()), batch_size=2)))
    assert batch["image"].shape == (2, 3, 16, 24) and batch["mask"].shape == (2, 1, 16, 24)
    assert torch.equal(batch["label"], torch.eye(4)[:2])


def test_resize_uses_nearest_labels_for_masks(tmp_path):
    item = {"image": str(_tile(tmp_path / "t.jpg")), "mask": str(_sicap_mask(tmp_path / "m.jpg"))}
    out = sicapv2_tile_transforms(spatial_size=(8, 12))(item)
    assert out["image"].shape == (3, 8, 12) and out["mask"].shape == (1, 8, 12)
    assert out["mask"].dtype == torch.int64
    full = sicapv2_tile_transforms()(item)["mask"]
    assert torch.equal(out["mask"].as_tensor(), labels_at_size(full.as_tensor(), (8, 12)))


def test_tile_mask_size_mismatch_names_both_files(tmp_path):
    tile = _tile(tmp_path / "t.jpg")
    mask = _sicap_mask(tmp_path / "m.jpg", labels=np.zeros((16, 20), np.int64))
    with pytest.raises(Exception) as err:
        sicapv2_tile_transforms()({"image": str(tile), "mask": str(mask)})
    text = _messages(err.value)
    assert "size mismatch" in text and str(tile) in text and str(mask) in text and "(16, 20)" in text


def test_mask_far_from_valid_values_names_the_file(tmp_path):
    tile = _tile(tmp_path / "t.jpg")
    mask = tmp_path / "m.jpg"
    Image.fromarray(np.full((16, 24), 200, np.uint8)).save(mask)  # e.g. a picture saved where a mask belongs
    with pytest.raises(Exception) as err:
        sicapv2_tile_transforms()({"image": str(tile), "mask": str(mask)})
    text = _messages(err.value)
    assert f"{mask}: mask value 200 (384 px) of 384 px map to no Gleason label" in text


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_jpeg_names_the_file(tmp_path, damage):
    path = _tile(tmp_path / "t.jpg", shape=(64, 64))
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a jpeg" * 20, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(ValueError, match="cannot read image file") as err:
        LoadPILImage()(path)
    assert str(path) in str(err.value)
    with pytest.raises(Exception) as err:
        sicapv2_tile_transforms(mask_key=None)({"image": str(path)})
    assert str(path) in _messages(err.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        LoadPILImage()(tmp_path / "nope.jpg")


def test_folder_pipeline_reads_png_labels_exactly_and_rejects_other_values(tmp_path):
    tile = _tile(tmp_path / "t.png")
    mask = tmp_path / "m.png"
    Image.fromarray(LABELS.astype(np.uint8)).save(mask)
    out = folder_tile_transforms()({"image": str(tile), "mask": str(mask)})
    np.testing.assert_array_equal(out["mask"][0].numpy(), LABELS)
    Image.fromarray(np.where(LABELS == 3, 5, LABELS).astype(np.uint8)).save(mask)  # SICAPv2 value 5 in a 0..3 PNG
    with pytest.raises(Exception) as err:
        folder_tile_transforms()({"image": str(tile), "mask": str(mask)})
    assert f"{mask}: mask value 5 (96 px)" in _messages(err.value)


def test_grayscale_and_rgba_tiles_load_as_three_channels(tmp_path):
    Image.fromarray(np.full((4, 6), 50, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((4, 6, 4), 50, np.uint8)).save(tmp_path / "a.png")
    assert LoadPILImage()(tmp_path / "g.png").shape == (3, 4, 6)
    assert LoadPILImage()(tmp_path / "a.png").shape == (3, 4, 6)
    assert LoadPILImage(mode="L")(tmp_path / "a.png").shape == (1, 4, 6)
