"""PANDA slide lists and mask value maps, on a hand-made train.csv and empty slide files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monai_disc.data.panda import load_panda, panda_mask_to_labels, parse_gleason_score

ROWS = [
    ("aaa1", "karolinska", "0", "0+0"),
    ("bbb2", "radboud", "0", "negative"),
    ("ccc3", "radboud", "2", "3+4"),
    ("ddd4", "karolinska", "5", "5+5"),
]


def make_panda(root: Path, rows=ROWS, masks=("bbb2", "ccc3")) -> Path:
    (root / "train_images").mkdir(parents=True)
    (root / "train_label_masks").mkdir()
    lines = ["image_id,data_provider,isup_grade,gleason_score"] + [",".join(r) for r in rows]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    for image_id, *_ in rows:
        (root / "train_images" / f"{image_id}.tiff").write_bytes(b"")
    for image_id in masks:
        (root / "train_label_masks" / f"{image_id}_mask.tiff").write_bytes(b"")
    return root


def test_slides_listed_with_labels_from_gleason_score_and_optional_masks(tmp_path):
    root = make_panda(tmp_path / "panda")
    items = load_panda(root)
    assert [d["slide_id"] for d in items] == ["aaa1", "bbb2", "ccc3", "ddd4"]
    assert [d["image"] for d in items] == [str(root / "train_images" / f"{r[0]}.tiff") for r in ROWS]
    assert [d["mask"] for d in items] == [
        None,
        str(root / "train_label_masks" / "bbb2_mask.tiff"),
        str(root / "train_label_masks" / "ccc3_mask.tiff"),
        None,
    ]
    assert [d["provider"] for d in items] == ["karolinska", "radboud", "radboud", "karolinska"]
    assert [d["isup_grade"] for d in items] == [0, 0, 2, 5]
    labels = np.stack([d["label"] for d in items])
    assert labels.dtype == np.float32
    # "0+0" and "negative" are both NC only; "3+4" -> GG3 + GG4; "5+5" -> GG5
    np.testing.assert_array_equal(labels, [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])


def test_slides_without_mask_directory_get_none(tmp_path):
    root = make_panda(tmp_path / "panda", masks=())
    (root / "train_label_masks").rmdir()
    assert [d["mask"] for d in load_panda(root)] == [None] * 4


@pytest.mark.parametrize("score", ["3+", "banana", "2+3", "0+4", ""])
def test_unparseable_score_names_csv_and_line(tmp_path, score):
    rows = [*ROWS[:2], ("eee5", "radboud", "1", score)]
    root = make_panda(tmp_path / "panda", rows=rows)
    with pytest.raises(ValueError) as err:
        load_panda(root)
    message = str(err.value)
    assert str(root / "train.csv") in message and "line 4" in message and "eee5" in message


def test_parse_gleason_score_accepts_spaces_and_case():
    assert parse_gleason_score(" 4 + 3 ") == (4, 3)
    assert parse_gleason_score("Negative") == (0, 0)
    assert parse_gleason_score("0+0") == (0, 0)
    assert parse_gleason_score("6+1") is None


def test_missing_slide_image_is_named(tmp_path):
    root = make_panda(tmp_path / "panda")
    (root / "train_images" / "ccc3.tiff").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_panda(root)
    assert str(root / "train_images" / "ccc3.tiff") in str(err.value)


def test_missing_column_and_missing_csv_are_named(tmp_path):
    root = make_panda(tmp_path / "panda")
    (root / "train.csv").write_text("image_id,data_provider,isup_grade\naaa1,radboud,0\n")
    with pytest.raises(ValueError, match="gleason_score") as err:
        load_panda(root)
    assert str(root / "train.csv") in str(err.value)
    (root / "train.csv").unlink()
    with pytest.raises(FileNotFoundError, match="train.csv"):
        load_panda(root)


def test_radboud_mask_values_map_to_gleason_labels():
    mask = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    np.testing.assert_array_equal(panda_mask_to_labels(mask, "radboud"), [[0, 0, 0], [1, 2, 3]])
    rgb = np.stack([mask, np.full_like(mask, 9), np.full_like(mask, 9)], axis=-1)  # labels in R only
    np.testing.assert_array_equal(panda_mask_to_labels(rgb, "radboud"), [[0, 0, 0], [1, 2, 3]])
    np.testing.assert_array_equal(
        panda_mask_to_labels(rgb.transpose(2, 0, 1), "radboud", channel_dim=0), [[0, 0, 0], [1, 2, 3]]
    )


def test_karolinska_masks_are_refused_as_not_grade_resolved():
    with pytest.raises(ValueError, match="not grade-resolved"):
        panda_mask_to_labels(np.zeros((2, 2), np.uint8), "karolinska")


def test_radboud_mask_with_foreign_values_is_refused():
    with pytest.raises(ValueError, match=r"\[6, 200\]"):
        panda_mask_to_labels(np.array([[0, 6], [200, 3]], np.uint8), "radboud")
