"""Whole slides: tissue detection, tiling at a target resolution, tiles read at coordinates, and `tile-slides`.

Every slide here is a real pyramidal TIFF written with tifffile and read back through MONAI's WSIReader with the
OpenSlide backend (tifffile for the untiled one OpenSlide refuses): a pink tissue block on white glass at known
level-0 coordinates, so the expected tiles, fractions and pixels follow from the drawing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from monai_disc.apps.cli import main
from monai_disc.apps.tile_slides import list_slides, tile_slides
from monai_disc.data.tilesets import tile_loader
from monai_disc.data.wsi import (
    SlideTileLoader,
    detect_tissue,
    failed_slides,
    load_wsi_bags,
    open_slide,
    plan_slide_tiles,
    read_coords,
    read_tile,
    tile_slide,
)
from monai_disc.networks import build_extractor, extract_bag_features

W, H = 2048, 1536  # level 0
BLOCK = (512, 512, 1536, 1024)  # x0, y0, x1, y1 of the tissue at level 0
MPP = 0.5  # um per level-0 pixel


def _slide_array(seed: int = 0, block=BLOCK, shape=(H, W)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    level0 = np.full((*shape, 3), 240, np.uint8)
    x0, y0, x1, y1 = block
    pink = np.array([215, 120, 185]) + rng.integers(-25, 26, (y1 - y0, x1 - x0, 3))
    level0[y0:y1, x0:x1] = np.clip(pink, 0, 255).astype(np.uint8)
    return level0


def _write_pyramid(path: Path, level0: np.ndarray, mpp: float | None = MPP, n_levels: int = 3, nearest=False) -> Path:
    """A tiled pyramidal TIFF, levels shrinking by 4, resolution tags in centimetres (or none)."""
    levels = [level0]
    for _ in range(n_levels - 1):
        prev = levels[-1]
        h, w = prev.shape[0] // 4, prev.shape[1] // 4
        if nearest:
            levels.append(np.ascontiguousarray(prev[2 : h * 4 : 4, 2 : w * 4 : 4]))
        else:
            levels.append(prev[: h * 4, : w * 4].reshape(h, 4, w, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8))
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            extra = {}
            if mpp is not None:
                px_per_cm = 1e4 / (mpp * level0.shape[1] / level.shape[1])
                extra = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
            tw.write(level, photometric="rgb", tile=(256, 256), compression="zlib", subfiletype=int(i > 0), **extra)
    return path


def _radboud_mask(path: Path) -> Path:
    """Stroma (1) in the block's top half, GG4 (4) in its bottom half but GG5 (5) in x 512..640."""
    values = np.zeros((H, W), np.uint8)
    x0, y0, x1, y1 = BLOCK
    values[y0:768, x0:x1] = 1
    values[768:y1, x0:x1] = 4
    values[768:y1, 512:640] = 5
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = values
    return _write_pyramid(path, rgb, nearest=True)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slides")
    level0 = _slide_array()
    good = _write_pyramid(root / "good.tiff", level0)
    _write_pyramid(root / "untagged.tiff", _slide_array(1), mpp=None)
    _write_pyramid(root / "tiny.tiff", _slide_array(2, block=(0, 0, 150, 100), shape=(150, 200)), n_levels=1)
    _write_pyramid(root / "glass.tiff", np.full((H, W, 3), 240, np.uint8))
    (root / "notes.tiff").write_text("not a slide\n")
    bad = _write_pyramid(root / "undecodable.tiff", _slide_array(3))
    with tifffile.TiffFile(bad) as tif:  # zero the compressed level-0 tiles; the header and coarse levels stay
        offsets, counts = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
    data = bytearray(bad.read_bytes())
    for offset, count in zip(offsets, counts):
        data[offset : offset + count] = bytes(count)
    bad.write_bytes(bytes(data))
    masks = root / "masks"
    masks.mkdir()
    _radboud_mask(masks / "good_mask.tiff")
    strip = root / "stripped" / "strip.tif"
    strip.parent.mkdir()
    tifffile.imwrite(strip, level0, photometric="rgb", resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    return {"root": root, "good": good, "level0": level0, "mask": masks / "good_mask.tiff", "strip": strip}


def _xy(tiles):
    return sorted((t["x"], t["y"]) for t in tiles)


# ----------------------------------------------------------------------------------------------
# detect_tissue
# ----------------------------------------------------------------------------------------------
def test_detect_tissue_keeps_large_pieces_and_large_holes_and_drops_specks():
    thumb = np.full((200, 200, 3), 240, np.uint8)
    thumb[20:180, 20:180] = (200, 100, 170)  # tissue, 160 x 160
    thumb[60:100, 60:100] = 240  # a large hole (40 x 40) kept
    thumb[140:143, 140:143] = 240  # a small hole (3 x 3) filled
    thumb[190:194, 5:9] = (200, 100, 170)  # a speck of tissue dropped
    # reference patch: 16 thumbnail px a side; pieces need 4 patches (1024 px), holes 2 patches (512 px)
    mask = detect_tissue(thumb, sthresh=15, mthresh=1, close=0, a_t=4, a_h=2, max_n_holes=4, ref_patch_size=16)
    assert mask[30, 30] and mask[141, 141]
    assert not mask[80, 80] and not mask[192, 7] and not mask[5, 5]
    assert mask.sum() == 160 * 160 - 40 * 40
    # Otsu finds the same tissue; a single largest hole is kept with max_n_holes=1
    thumb[120:130, 30:60] = 240  # a second hole (300 px): under a_h, filled
    otsu = detect_tissue(thumb, use_otsu=True, mthresh=1, close=0, a_t=4, a_h=0.5, max_n_holes=1, ref_patch_size=16)
    assert not otsu[80, 80] and otsu[125, 45]


def test_detect_tissue_thresholds_the_median_filtered_saturation():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    thumb = rng.integers(0, 256, (60, 80, 3)).astype(np.uint8)
    thumb[rng.random((60, 80)) < 0.5] = 235  # grey pixels: saturation 0
    rgb = thumb.astype(np.float64)
    saturation = 255 * (rgb.max(-1) - rgb.min(-1)) / np.maximum(rgb.max(-1), 1e-9)
    expected = ndimage.median_filter(saturation, size=7, mode="nearest") > 40
    got = detect_tissue(thumb, sthresh=40, mthresh=7, close=0, a_t=0, a_h=1e9)
    assert expected.any() and (~expected).any()
    assert np.array_equal(got, ndimage.binary_fill_holes(expected))  # every hole filled (a_h), no piece dropped


def test_detect_tissue_rejects_a_grey_picture():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detect_tissue(np.zeros((10, 10), np.uint8))


# ----------------------------------------------------------------------------------------------
# tile_slide and read_tile
# ----------------------------------------------------------------------------------------------
def test_tiles_cover_the_tissue_at_the_target_resolution(slides):
    # 1.0 um/px from a 0.5 um/px slide: 128 px tiles span 256 level-0 px, read at level 0 (2.0 um/px is too coarse)
    plan = plan_slide_tiles(slides["good"], tile_size=128, mpp=1.0, min_tissue=0.5)
    assert (plan.base_mpp, plan.level, plan.size, plan.step) == (0.5, 0, 256, 256)
    assert plan.thumbnail_level == 2 and plan.thumbnail.shape == (96, 128, 3)  # only the 16x level was read
    assert _xy(plan.tiles) == [(x, y) for x in (512, 768, 1024, 1280) for y in (512, 768)]
    assert all(t["level"] == 0 and t["size"] == 256 for t in plan.tiles)
    tissue = {(t["x"], t["y"]): t["tissue"] for t in plan.tiles}
    assert tissue[(768, 512)] == tissue[(1024, 768)] == 1.0 and min(tissue.values()) > 0.9  # median-rounded corners
    # 2.0 um/px: level 1 is exactly that fine; 128 px tiles span 512 level-0 px
    coarse = tile_slide(slides["good"], tile_size=128, mpp=2.0)
    assert _xy(coarse) == [(512, 512), (1024, 512)] and {(t["level"], t["size"]) for t in coarse} == {(1, 128)}
    # 1.5 um/px: a 384 px grid the block does not align with; min_tissue 0 keeps every tile touching tissue
    touching = tile_slide(slides["good"], tile_size=128, mpp=1.5, min_tissue=0.0)
    assert _xy(touching) == [(x, y) for x in (384, 768, 1152) for y in (384, 768)]
    fraction = {(t["x"], t["y"]): t["tissue"] for t in touching}
    assert fraction[(768, 384)] == pytest.approx(2 / 3, abs=0.01) and fraction[(384, 384)] < 4 / 9
    half = tile_slide(slides["good"], tile_size=128, mpp=1.5, min_tissue=0.5)
    assert _xy(half) == [(x, y) for x in (768, 1152) for y in (384, 768)]


def test_read_tile_returns_the_area_average_of_the_level0_pixels(slides):
    reader, wsi = open_slide(slides["good"])
    try:
        tile = {"x": 768, "y": 512, "level": 0, "size": 256}
        got = read_tile(reader, wsi, tile, 128).astype(np.float32)
        crop = slides["level0"][512:768, 768:1024].astype(np.float32)
        expected = crop.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
        assert got.shape == (128, 128, 3)
        assert np.abs(got - expected).max() <= 1.0
        same = read_tile(reader, wsi, tile, 256)
        assert np.array_equal(same, slides["level0"][512:768, 768:1024])
    finally:
        wsi.close()


def test_a_radboud_mask_gives_label_fractions_and_karolinska_masks_are_refused(slides):
    tiles = {(t["x"], t["y"]): t for t in tile_slide(slides["good"], 128, 1.0, mask=slides["mask"])}
    assert len(tiles) == 8
    assert tiles[(768, 512)] | {} == {**tiles[(768, 512)], "nc": 1.0, "gg3": 0.0, "gg4": 0.0, "gg5": 0.0}
    assert (tiles[(768, 768)]["gg4"], tiles[(768, 768)]["nc"]) == (1.0, 0.0)
    assert (tiles[(512, 768)]["gg4"], tiles[(512, 768)]["gg5"]) == (0.5, 0.5)  # GG5 in x 512..640
    with pytest.raises(ValueError, match="karolinska"):
        tile_slide(slides["good"], 128, 1.0, mask=slides["mask"], provider="karolinska")


def test_resolution_comes_from_the_metadata_or_base_mpp(slides):
    untagged = slides["root"] / "untagged.tiff"
    with pytest.raises(ValueError, match=r"untagged\.tiff: no resolution.*--base-mpp"):
        tile_slide(untagged, 128, 1.0)
    assert _xy(tile_slide(untagged, 128, 1.0, base_mpp=MPP)) == _xy(tile_slide(slides["good"], 128, 1.0))
    # metadata wins over base_mpp
    assert _xy(tile_slide(slides["good"], 128, 1.0, base_mpp=0.25)) == _xy(tile_slide(slides["good"], 128, 1.0))


@pytest.mark.parametrize(
    "name, writer, unit, dpi, words",
    [
        ("editor72.tif", "pillow", "INCH", 72, ["XResolution=72", "inch", "352.8 um/px", "screen default"]),
        ("screen96.tif", "pillow", "INCH", 96, ["XResolution=96", "264.6 um/px", "screen default"]),
        ("tiled72.tif", "tifffile", "INCH", 72, ["tiff.XResolution=72", "inch", "352.8 um/px", "screen default"]),
        ("tiled96.tif", "tifffile", "INCH", 96, ["tiff.XResolution=96", "screen default"]),
        ("odd_cm.tif", "tifffile", "CENTIMETER", 200, ["XResolution=200", "centimeter", "50 um/px", "outside"]),
    ],
)
def test_untrusted_resolution_tags_need_base_mpp(slides, tmp_path, name, writer, unit, dpi, words):
    path = tmp_path / name
    if writer == "pillow":  # as an image editor saves it: one strip image, dpi tags (OpenSlide refuses it)
        Image.fromarray(slides["level0"]).save(path, dpi=(dpi, dpi))
    else:  # tiled: OpenSlide opens it as generic-tiff and derives openslide.mpp-x from the tags
        tifffile.imwrite(path, slides["level0"], photometric="rgb", tile=(256, 256), resolution=(dpi, dpi),
                         resolutionunit=unit)  # fmt: skip
    with pytest.raises(ValueError) as err:
        tile_slide(path, 128, 1.0)
    assert str(path) in str(err.value) and "--base-mpp" in str(err.value)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert _xy(tile_slide(path, 128, 1.0, base_mpp=MPP)) == _xy(tile_slide(slides["good"], 128, 1.0))


def test_inch_tags_of_a_scanner_resolution_are_trusted(slides, tmp_path):
    path = tmp_path / "inch.tif"
    dpi = 25400 / MPP  # 0.5 um/px written in dots per inch
    tifffile.imwrite(path, slides["level0"], photometric="rgb", tile=(256, 256), resolution=(dpi, dpi),
                     resolutionunit="INCH")  # fmt: skip
    plan = plan_slide_tiles(path, 128, 1.0)
    assert plan.base_mpp == pytest.approx(MPP) and _xy(plan.tiles) == _xy(tile_slide(slides["good"], 128, 1.0))


def test_tile_slides_refuses_a_72_dpi_tiff_until_given_the_mpp(slides, tmp_path, capsys):
    path = tmp_path / "editor72.tif"
    Image.fromarray(slides["level0"]).save(path, dpi=(72, 72))
    argv = ["tile-slides", "--slides", str(path), "--tile-size", "128"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 1
    row = _manifest(tmp_path / "a")["editor72"]
    assert row["status"] == "error" and row["n_tiles"] == "0"
    assert (
        f"{path}: resolution tag XResolution=72.0 ResolutionUnit=inch (352.8 um/px) is a screen default"
        in row["message"]
    )
    assert "editor72.tif" in capsys.readouterr().err
    # extract-features --wsi leaves it out, naming it and the tag
    assert [(sid, "XResolution=72.0" in msg) for sid, msg in failed_slides(tmp_path / "a")] == [("editor72", True)]
    assert main([*argv, "--out", str(tmp_path / "b"), "--base-mpp", str(MPP)]) == 0
    row = _manifest(tmp_path / "b")["editor72"]
    assert (row["status"], row["n_tiles"], row["mpp"]) == ("ok", "8", "0.5")


def test_untiled_tiffs_that_openslide_refuses_are_read_by_tifffile(slides):
    reader, wsi = open_slide(slides["strip"])
    assert reader.backend == "tifffile"
    wsi.close()
    assert _xy(tile_slide(slides["strip"], 128, 1.0)) == _xy(tile_slide(slides["good"], 128, 1.0))


def test_small_and_empty_slides_have_no_tiles_and_non_slides_are_refused(slides):
    root = slides["root"]
    assert tile_slide(root / "tiny.tiff", 128, 1.0) == []
    assert tile_slide(root / "glass.tiff", 128, 1.0) == []
    with pytest.raises(ValueError, match=r"notes\.tiff: cannot be opened as a slide \(openslide: .*; tifffile: "):
        tile_slide(root / "notes.tiff", 128, 1.0)
    with pytest.raises(FileNotFoundError, match="nowhere.tiff"):
        tile_slide(root / "nowhere.tiff")


# ----------------------------------------------------------------------------------------------
# tile-slides
# ----------------------------------------------------------------------------------------------
def _manifest(out: Path) -> dict[str, dict]:
    with (out / "manifest.csv").open(newline="") as f:
        return {row["slide_id"]: row for row in csv.DictReader(f)}


def test_tile_slides_records_every_slide_and_exits_1_when_some_failed(slides, tmp_path, capsys):
    out = tmp_path / "tiles"
    argv = ["tile-slides", "--slides", str(slides["root"]), "--out", str(out), "--tile-size", "128",
            "--base-mpp", "0.5"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    rows = _manifest(out)
    assert list(rows) == ["glass", "good", "notes", "tiny", "undecodable", "untagged"]
    status = {sid: row["status"] for sid, row in rows.items()}
    assert status == {"glass": "empty", "good": "ok", "notes": "error", "tiny": "empty", "undecodable": "error",
                      "untagged": "ok"}  # fmt: skip
    assert rows["good"]["n_tiles"] == "8" and rows["good"]["mpp"] == "0.5" and rows["good"]["level"] == "0"
    assert "smaller than one tile" in rows["tiny"]["message"] and "tissue" in rows["glass"]["message"]
    assert "notes.tiff: cannot be opened as a slide" in rows["notes"]["message"]
    assert "undecodable.tiff: cannot decode its tiles at level 0" in rows["undecodable"]["message"]
    assert all("\n" not in r["message"] for r in rows.values())
    assert "notes.tiff" in err and "undecodable.tiff" in err
    assert _xy(read_coords(out / "coords" / "good.csv")) == _xy(tile_slide(slides["good"], 128, 1.0))
    picture = Image.open(out / "thumbnails" / "good.png")
    assert picture.size == (512, 4 * 96 + 22)  # the 128 x 96 thumbnail enlarged 4 times, over its legend strip
    assert tuple(np.asarray(picture)[200, 127]) == (0, 170, 0)  # the tissue outline just left of the first tile
    assert not (out / "thumbnails" / "notes.png").exists()

    # resume: ok and empty slides are skipped, the failed ones retried (and still failing)
    stamp = (out / "records" / "good.json").stat().st_mtime_ns
    assert main(argv) == 1
    assert (out / "records" / "good.json").stat().st_mtime_ns == stamp
    # other settings into the same folder are refused
    assert main([*argv[:-4], "--tile-size", "256", "--base-mpp", "0.5"]) == 2
    assert "other settings (tile_size:" in capsys.readouterr().err


def test_tile_slides_shards_by_rank_and_the_last_rank_writes_the_manifest(slides, tmp_path):
    items = list_slides([slides["good"], slides["root"] / "untagged.tiff", slides["root"] / "glass.tiff"])
    first = tile_slides(items, tmp_path, tile_size=128, base_mpp=0.5, rank=0, world_size=2, progress=False)
    assert [r["slide_id"] for r in first.rows] == ["good", "glass"] and first.manifest is None
    second = tile_slides(items, tmp_path, tile_size=128, base_mpp=0.5, rank=1, world_size=2, progress=False)
    assert [r["slide_id"] for r in second.rows] == ["untagged"] and second.manifest == tmp_path / "manifest.csv"
    assert list(_manifest(tmp_path)) == ["good", "untagged", "glass"]


# ----------------------------------------------------------------------------------------------
# features straight from the slides
# ----------------------------------------------------------------------------------------------
def test_features_from_slides_equal_features_from_the_same_tiles_as_files(slides, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,gleason_score\ngood,3+4\nuntagged,negative\n")
    tiles = tmp_path / "tiles"
    argv = ["tile-slides", "--slides", str(slides["good"]), str(slides["root"] / "untagged.tiff"), "--out", str(tiles),
            "--tile-size", "64", "--base-mpp", "0.5", "--labels", str(labels)]  # fmt: skip
    assert main(argv) == 0
    bags = load_wsi_bags(tiles)
    assert [b["slide_id"] for b in bags] == ["good", "untagged"]
    assert bags[0]["label"].tolist() == [0, 1, 1, 0] and bags[1]["label"].tolist() == [1, 0, 0, 0]
    assert main(["extract-features", "--wsi", str(tiles), "--out", str(tmp_path / "wsi"), "--num-workers", "2"]) == 0

    # the same tiles written as PNG files (lossless) and embedded through the file path
    reader, wsi = open_slide(slides["good"])
    files = []
    for i, tile in enumerate(bags[0]["tiles"]):
        files.append(tmp_path / "png" / f"{i:03d}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(read_tile(reader, wsi, tile, 64)).save(files[-1])
    wsi.close()
    extractor = build_extractor("carcinonet_toy")
    ref = [{"slide_id": "good", "tiles": [str(f) for f in files], "label": bags[0]["label"]}]
    extract_bag_features(ref, extractor, tmp_path / "png_features", progress=False, loader=tile_loader())
    from_slide = torch.load(tmp_path / "wsi" / "good.pt", weights_only=True)
    from_files = torch.load(tmp_path / "png_features" / "good.pt", weights_only=True)
    assert from_slide["features"].shape == (32, extractor.num_features)  # 128 level-0 px tiles
    assert torch.allclose(from_slide["features"].float(), from_files["features"].float(), atol=1e-3)
    with (tmp_path / "wsi" / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["slide_id"], r["n_tiles"], r["GG3"]) for r in rows] == [("good", "32", "1"), ("untagged", "32", "0")]


def test_slide_tile_loader_names_the_slide_and_tile_it_cannot_read(slides):
    loader = SlideTileLoader(64)
    good = loader({"image": str(slides["good"]), "x": 512, "y": 512, "level": 0, "size": 128})
    assert good.shape == (3, 64, 64) and -1.0 <= float(good.min()) < float(good.max()) <= 1.0
    bad = str(slides["root"] / "undecodable.tiff")
    with pytest.raises(ValueError, match=r"undecodable\.tiff: cannot read the tile at x=512, y=512 \(level 0\)"):
        loader({"image": bad, "x": 512, "y": 512, "level": 0, "size": 128})
    loader.close()


def test_unlabelled_slides_are_refused_for_feature_bags(slides, tmp_path):
    assert main(["tile-slides", "--slides", str(slides["good"]), "--out", str(tmp_path), "--tile-size", "64"]) == 0
    assert json.loads((tmp_path / "tiling.json").read_text())["tile_size"] == 64
    with pytest.raises(ValueError, match=r"1 slide\(s\) without labels \(\['good'\]\)"):
        load_wsi_bags(tmp_path)
