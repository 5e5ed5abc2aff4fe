"""Plain user tile folders (images/, masks/, labels.csv) -> data lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_disc.data.folder import load_folder, parse_tile_labels


def make_folder(root: Path, names=("b.png", "a.jpg", "c.tif"), masks=True, csv: str | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    for name in names:
        Image.fromarray(np.full((6, 6, 3), 120, np.uint8)).save(root / "images" / name)
    (root / "images" / "notes.txt").write_text("ignored")
    if masks:
        (root / "masks").mkdir()
        for name in names:
            Image.fromarray(np.zeros((6, 6), np.uint8)).save(root / "masks" / f"{Path(name).stem}.png")
    if csv is not None:
        (root / "labels.csv").write_text(csv)
    return root


def test_without_csv_every_image_is_listed_sorted_with_its_mask(tmp_path):
    root = make_folder(tmp_path / "f")
    items = load_folder(root)
    assert [Path(d["image"]).name for d in items] == ["a.jpg", "b.png", "c.tif"]
    assert [d["mask"] for d in items] == [str(root / "masks" / f"{s}.png") for s in "abc"]
    assert [d["slide_id"] for d in items] == ["a", "b", "c"]
    assert all("label" not in d for d in items)


def test_csv_orders_rows_sets_slides_and_labels(tmp_path):
    csv = "image,slide_id,label\nc.tif,s2,GG3;GG4\na,s1,NC\nb.png,,3\n"
    root = make_folder(tmp_path / "f", csv=csv)
    items = load_folder(root)
    assert [Path(d["image"]).name for d in items] == ["c.tif", "a.jpg", "b.png"]
    assert [d["slide_id"] for d in items] == ["s2", "s1", "b"]
    np.testing.assert_array_equal(np.stack([d["label"] for d in items]), [[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])


def test_without_masks_directory_masks_are_none(tmp_path):
    root = make_folder(tmp_path / "f", masks=False)
    assert [d["mask"] for d in load_folder(root)] == [None, None, None]


def test_missing_mask_is_named(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "masks" / "b.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_folder(root)
    assert str(root / "masks" / "b.png") in str(err.value)


def test_csv_row_naming_a_missing_image_names_csv_line_and_image(tmp_path):
    root = make_folder(tmp_path / "f", csv="image\na.jpg\nzzz.png\n")
    with pytest.raises(FileNotFoundError) as err:
        load_folder(root)
    assert str(root / "labels.csv") in str(err.value) and "line 3" in str(err.value) and "zzz.png" in str(err.value)


def test_csv_extension_must_match_the_file(tmp_path):
    root = make_folder(tmp_path / "f", csv="image\na.png\n")  # the file is a.jpg
    with pytest.raises(FileNotFoundError, match="a.png"):
        load_folder(root)


def test_unknown_label_names_csv_line(tmp_path):
    root = make_folder(tmp_path / "f", csv="image,label\na,GG3\nb,GG7\n")
    with pytest.raises(ValueError) as err:
        load_folder(root)
    assert "line 3" in str(err.value) and "GG7" in str(err.value) and str(root / "labels.csv") in str(err.value)


def test_two_images_with_one_name_are_refused(tmp_path):
    root = make_folder(tmp_path / "f", names=("a.png", "a.jpg"))
    with pytest.raises(ValueError, match="two images named 'a'"):
        load_folder(root)


def test_csv_without_image_column_and_missing_images_dir(tmp_path):
    root = make_folder(tmp_path / "f", csv="name\na\n")
    with pytest.raises(ValueError, match="'image'"):
        load_folder(root)
    with pytest.raises(FileNotFoundError, match="images"):
        load_folder(tmp_path)


def test_parse_tile_labels_forms():
    assert parse_tile_labels("gg3 GG5") == [1, 3]
    assert parse_tile_labels("0;2") == [0, 2]
    with pytest.raises(ValueError, match="empty"):
        parse_tile_labels("  ")
