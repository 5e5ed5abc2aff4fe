"""SICAPv2 data lists and slide labels, on hand-made sheets and tiny JPEGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from monai_disc.data.sicapv2 import (
    format_summary,
    load_sicapv2,
    load_sicapv2_slide_labels,
    load_sicapv2_slides,
    sicapv2_sheet_path,
    summarize_sicapv2,
)

TILES = {
    # name in the sheet (with or without .jpg) -> NC, G3, G4, G5, G4C
    "16B0001851_Block_Region_1_0_0_xini_6803_yini_59786.jpg": (1, 0, 0, 0, 0),
    "16B0001851_Block_Region_1_0_1_xini_7315_yini_59786": (0, 1, 1, 0, 0),
    "17B0031388_Block_Region_3_2_0_xini_100_yini_200": (0, 0, 0, 0, 1),  # cribriform only -> GG4
    "17B0031388_Block_Region_3_2_1_xini_612_yini_200.jpg": (0, 0, 0, 1, 1),
}


def _write_tile(root: Path, stem: str) -> None:
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(root / "images" / f"{stem}.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / f"{stem}.jpg")


def _sheet(rows: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [(name, *flags) for name, flags in rows.items()], columns=["image_name", "NC", "G3", "G4", "G5", "G4C"]
    )


def make_sicapv2(root: Path, tiles: dict = TILES) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in tiles:
        _write_tile(root, name.removesuffix(".jpg"))
    sheet = sicapv2_sheet_path(root, "Test", "Train")
    sheet.parent.mkdir(parents=True)
    _sheet(tiles).to_excel(sheet, index=False)
    val = sicapv2_sheet_path(root, "Val2", "Test")
    val.parent.mkdir(parents=True)
    _sheet(dict(list(tiles.items())[2:])).to_excel(val, index=False)
    pd.DataFrame(
        {
            "slide_id": ["16B0001851", "17B0031388"],
            "patient_id": [7, 12],
            "Gleason_primary": [0, 4],
            "Gleason_secondary": [0, 5],
        }
    ).to_excel(root / "wsi_labels.xlsx", index=False)
    return root


def test_tiles_listed_with_paths_slide_ids_and_multi_hot_labels(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    items = load_sicapv2(root)
    assert [Path(d["image"]).name for d in items] == [
        "16B0001851_Block_Region_1_0_0_xini_6803_yini_59786.jpg",
        "16B0001851_Block_Region_1_0_1_xini_7315_yini_59786.jpg",
        "17B0031388_Block_Region_3_2_0_xini_100_yini_200.jpg",
        "17B0031388_Block_Region_3_2_1_xini_612_yini_200.jpg",
    ]
    assert all(Path(d["mask"]) == root / "masks" / Path(d["image"]).name for d in items)
    assert [d["slide_id"] for d in items] == ["16B0001851", "16B0001851", "17B0031388", "17B0031388"]
    labels = np.stack([d["label"] for d in items])
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels, [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1]])


def test_validation_fold_reads_its_own_sheet(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    items = load_sicapv2(root, partition="Val2", split="Test")
    assert len(items) == 2 and {d["slide_id"] for d in items} == {"17B0031388"}
    assert sicapv2_sheet_path(root, "Val2", "Test") == root / "partition" / "Validation" / "Val2" / "Test.xlsx"


@pytest.mark.parametrize("kwargs, named", [({"partition": "Val5"}, "Val1"), ({"split": "Valid"}, "Train")])
def test_bad_partition_or_split_lists_the_valid_ones(tmp_path, kwargs, named):
    root = make_sicapv2(tmp_path / "sicap")
    with pytest.raises(ValueError, match=named) as err:
        load_sicapv2(root, **kwargs)
    assert next(iter(kwargs.values())) in str(err.value)


def test_missing_root_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_sicapv2(tmp_path / "nowhere")


def test_missing_sheet_names_its_path(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    with pytest.raises(FileNotFoundError) as err:
        load_sicapv2(root, partition="Val1")
    assert str(root / "partition" / "Validation" / "Val1" / "Train.xlsx") in str(err.value)


def test_missing_column_is_named_with_the_sheet(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    sheet = sicapv2_sheet_path(root, "Test", "Train")
    _sheet(TILES).drop(columns=["G4C", "G5"]).to_excel(sheet, index=False)
    with pytest.raises(ValueError) as err:
        load_sicapv2(root)
    assert str(sheet) in str(err.value) and "'G5'" in str(err.value) and "'G4C'" in str(err.value)


def test_non_numeric_flag_names_sheet_and_row(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    sheet = sicapv2_sheet_path(root, "Test", "Train")
    frame = _sheet(TILES).astype({"G3": object})
    frame.loc[2, "G3"] = "yes"
    frame.to_excel(sheet, index=False)
    with pytest.raises(ValueError) as err:
        load_sicapv2(root)
    assert str(sheet) in str(err.value) and "'G3'" in str(err.value) and "[4]" in str(err.value)


def test_missing_image_is_named(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    gone = root / "images" / "17B0031388_Block_Region_3_2_0_xini_100_yini_200.jpg"
    gone.unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_sicapv2(root)
    assert str(gone) in str(err.value) and "1 image" in str(err.value)


def test_missing_mask_is_named(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    gone = root / "masks" / "16B0001851_Block_Region_1_0_1_xini_7315_yini_59786.jpg"
    gone.unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_sicapv2(root)
    assert str(gone) in str(err.value) and "mask" in str(err.value)


def test_corrupt_sheet_names_its_path(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    sheet = sicapv2_sheet_path(root, "Test", "Train")
    sheet.write_bytes(b"not a spreadsheet")
    with pytest.raises(ValueError, match="cannot read") as err:
        load_sicapv2(root)
    assert str(sheet) in str(err.value)


def test_slide_labels_are_multi_hot_of_primary_and_secondary(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    labels = load_sicapv2_slide_labels(root)
    assert set(labels) == {"16B0001851", "17B0031388"}
    np.testing.assert_array_equal(labels["16B0001851"], [1, 0, 0, 0])
    np.testing.assert_array_equal(labels["17B0031388"], [0, 0, 1, 1])
    slides = load_sicapv2_slides(root)
    assert [(s["patient_id"], s["primary"], s["secondary"]) for s in slides] == [("7", 0, 0), ("12", 4, 5)]


def test_bad_gleason_value_names_file_and_row(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    pd.DataFrame(
        {"slide_id": ["a", "b"], "patient_id": [1, 2], "Gleason_primary": [3, 2], "Gleason_secondary": [4, 3]}
    ).to_excel(root / "wsi_labels.xlsx", index=False)
    with pytest.raises(ValueError) as err:
        load_sicapv2_slide_labels(root)
    message = str(err.value)
    assert str(root / "wsi_labels.xlsx") in message and "row 3" in message and "slide b" in message


def test_slide_sheet_without_column_is_rejected(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    pd.DataFrame({"slide_id": ["a"], "Gleason_primary": [3]}).to_excel(root / "wsi_labels.xlsx", index=False)
    with pytest.raises(ValueError, match="Gleason_secondary"):
        load_sicapv2_slides(root)


def test_summary_counts_tiles_per_grade_and_slides_per_primary(tmp_path):
    root = make_sicapv2(tmp_path / "sicap")
    summary = summarize_sicapv2(root)
    assert [(s["partition"], s["split"]) for s in summary["sheets"]] == [("Test", "Train"), ("Val2", "Test")]
    test_train = summary["sheets"][0]
    assert (test_train["tiles"], test_train["slides"]) == (4, 2)
    assert [test_train[k] for k in ("NC", "GG3", "GG4", "GG5")] == [1, 1, 3, 1]
    assert summary["slides"] == {"total": 2, "primary": {"NC": 1, "GG3": 0, "GG4": 1, "GG5": 0}}
    text = format_summary(summary)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("partition"))
    row = next(line for line in lines if line.startswith("Test "))
    assert row.split() == ["Test", "Train", "4", "2", "1", "1", "3", "1"]
    assert len(row) == len(header)  # right-aligned numbers end under their header
    assert "primary grade" in text
