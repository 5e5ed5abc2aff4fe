"""Evaluation glue: labelled data lists, pending inference tiles, metrics JSON, overlay grids, label maps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler, from_engine
from PIL import Image

from monai_disc.data.sicapv2 import load_sicapv2
from monai_disc.engines.evaluation import (
    LabelMapWriter,
    MetricsJSONWriter,
    OverlayGridSaver,
    labelled_tile_transforms,
    labelled_tiles,
    list_tiles,
    pending_tiles,
)
from monai_disc.metrics import PixelGradingMetric
from monai_disc.visualize import overlay


def _folder(root: Path, names: list[str], size: int = 8, masks: bool = True, ext: str = ".png") -> Path:
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    for i, name in enumerate(names):
        rgb = np.full((size, size, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{name}{ext}")
        if masks:
            lab = np.zeros((size, size), dtype=np.uint8)
            lab[: size // 2] = i % 4
            Image.fromarray(lab).save(root / "masks" / f"{name}.png")
    return root


def _run(engine_outputs: list, handlers: list, metrics: dict | None = None) -> Engine:
    engine = Engine(lambda e, batch: batch)
    for name, metric in (metrics or {}).items():
        metric.attach(engine, name)
    for h in handlers:
        h.attach(engine)
    engine.run(engine_outputs, max_epochs=1)
    return engine


def test_labelled_tiles_put_the_mask_under_label_for_both_layouts(toy_root, tmp_path):
    items = labelled_tiles(toy_root, "sicapv2", "Test", "Test")
    ref = load_sicapv2(toy_root, "Test", "Test")
    assert [d["image"] for d in items] == [d["image"] for d in ref]
    assert [d["label"] for d in items] == [d["mask"] for d in ref]
    assert set(items[0]) == {"image", "label", "slide_id"}

    root = _folder(tmp_path / "f", ["a", "b", "c"])
    items = labelled_tiles(root, "folder")
    assert [Path(d["label"]).name for d in items] == ["a.png", "b.png", "c.png"]
    out = labelled_tile_transforms("folder")(items[2])
    assert out["label"].shape == (1, 8, 8) and int(out["label"].max()) == 2 and int(out["label"].sum()) == 2 * 32
    assert out["image"].shape == (3, 8, 8) and float(out["image"].min()) == pytest.approx(80 / 127.5 - 1)


def test_labelled_tiles_reject_unknown_format_and_folders_without_masks(tmp_path):
    root = _folder(tmp_path / "nomask", ["a"], masks=False)
    for data_format in ("folder", "panda"):  # panda: the folder layout with radboud masks
        with pytest.raises(ValueError, match="no masks/"):
            labelled_tiles(root, data_format)
    with pytest.raises(ValueError, match="data_format"):
        labelled_tiles(root, "camelyon")
    with pytest.raises(ValueError, match="data_format"):
        labelled_tile_transforms("jpeg")


def test_list_tiles_sorts_falls_back_to_images_and_rejects_bad_folders(tmp_path):
    root = _folder(tmp_path / "f", ["b", "a"], masks=False, ext=".jpg")
    assert [t.name for t in list_tiles(root)] == ["a.jpg", "b.jpg"]  # from images/
    assert [t.name for t in list_tiles(root / "images")] == ["a.jpg", "b.jpg"]
    Image.new("RGB", (4, 4)).save(root / "images" / "a.png")
    with pytest.raises(ValueError, match="two tiles named 'a'"):
        list_tiles(root)
    with pytest.raises(FileNotFoundError, match="missing"):
        list_tiles(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no tiles"):
        list_tiles(tmp_path / "empty")


def test_pending_tiles_skip_tiles_with_a_label_map(tmp_path):
    root = _folder(tmp_path / "f", ["a", "b", "c"], masks=False)
    out = tmp_path / "out"
    assert [Path(d["image"]).stem for d in pending_tiles(root / "images", out)] == ["a", "b", "c"]
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "b.png").write_bytes(b"done")
    (out / "overlays").mkdir()
    (out / "overlays" / "c.png").write_bytes(b"overlay alone does not mark a tile done")
    assert [Path(d["image"]).stem for d in pending_tiles(root / "images", out)] == ["a", "c"]


def _scores_batches() -> tuple[list[dict], torch.Tensor]:
    """Two batches of (logits, labels) and their true confusion matrix."""
    g = torch.Generator().manual_seed(0)
    batches, cm = [], torch.zeros(4, 4, dtype=torch.long)
    for _ in range(2):
        label = torch.randint(0, 4, (2, 1, 6, 6), generator=g)
        logits = torch.randn(2, 4, 6, 6, generator=g)
        pred = logits.argmax(1)
        for t, p in zip(label.flatten().tolist(), pred.flatten().tolist()):
            cm[t, p] += 1
        batches.append({"pred": logits, "label": label})
    return batches, cm


def test_metrics_json_writer_writes_full_scores_atomically_and_prints(tmp_path, capsys):
    batches, cm = _scores_batches()
    path = tmp_path / "eval" / "metrics.json"
    writer = MetricsJSONWriter(path, metric_names=["grading"], extra={"classes": ["NC", "GG3", "GG4", "GG5"]})
    metric = IgniteMetricHandler(metric_fn=PixelGradingMetric(), output_transform=from_engine(["pred", "label"]))
    _run(batches, [writer], {"grading": metric})
    data = json.loads(path.read_text())
    assert data["classes"] == ["NC", "GG3", "GG4", "GG5"]
    assert data["grading"]["confusion_matrix"] == cm.tolist()
    assert data["grading"]["pixel_accuracy"] == pytest.approx(float(cm.diagonal().sum() / cm.sum()))
    iou = cm.diagonal().double() / (cm.sum(0) + cm.sum(1) - cm.diagonal()).double()
    assert data["grading"]["miou"] == pytest.approx(float(iou.mean()))
    assert os.listdir(path.parent) == ["metrics.json"]  # no temp file left
    assert json.loads(capsys.readouterr().out) == data
    assert "[" + ", ".join(str(v) for v in cm[0].tolist()) + "]" in path.read_text()  # one line per row


def test_metrics_json_writer_turns_nan_into_null_and_names_missing_metrics(tmp_path):
    path = tmp_path / "m.json"
    metric = IgniteMetricHandler(metric_fn=PixelGradingMetric(), output_transform=from_engine(["pred", "label"]))
    only_nc = [{"pred": torch.zeros(1, 1, 2, 2), "label": torch.zeros(1, 1, 2, 2)}]
    _run(only_nc, [MetricsJSONWriter(path, echo=False)], {"grading": metric})
    data = json.loads(path.read_text())  # strict JSON: NaN would not parse with this check
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert data["grading"]["precision"] == [1.0, None, None, None]
    assert data["grading"]["positive_precision"] is None
    with pytest.raises(KeyError, match="not computed"):
        _run(only_nc, [MetricsJSONWriter(path, metric_names=["dice"], echo=False)])


def test_overlay_grid_saver_draws_tile_truth_prediction_rows(tmp_path):
    tiles = torch.linspace(-1, 1, 3 * 3 * 5 * 5).reshape(3, 3, 5, 5)
    labels = torch.tensor([0, 1, 2]).view(3, 1, 1, 1).expand(3, 1, 5, 5)
    logits = torch.nn.functional.one_hot(torch.tensor([3, 3, 1]), 4).float().view(3, 4, 1, 1).expand(3, 4, 5, 5)
    outputs = [[{"image": tiles[i], "label": labels[i], "pred": logits[i]}] for i in range(3)]  # decollated
    saver = OverlayGridSaver(tmp_path / "grid.png", num_tiles=2)
    _run(outputs, [saver])
    pic = np.asarray(Image.open(tmp_path / "grid.png"))
    from monai_disc.visualize import legend, text_size

    head, below = int(1.4 * text_size(5)), legend(3 * 5 + 4 * 2, text_size(5)).height  # titles; colour legend
    assert pic.shape == (head + 2 * 5 + 3 * 2 + below, 3 * 5 + 4 * 2, 3)  # 2 rows, 3 columns, 2 px padding
    cell = lambda r, c: pic[head + 2 + r * 7 : head + 2 + r * 7 + 5, 2 + c * 7 : 2 + c * 7 + 5]  # noqa: E731
    np.testing.assert_array_equal(cell(1, 1), overlay(tiles[1], labels[1]))
    np.testing.assert_array_equal(cell(1, 2), overlay(tiles[1], torch.full((5, 5), 3)))
    np.testing.assert_array_equal(cell(0, 2), overlay(tiles[0], torch.full((5, 5), 3)))
    # an engine that does not decollate gives one batch dict: same picture
    _run([{"image": tiles, "label": labels, "pred": logits}], [OverlayGridSaver(tmp_path / "batch.png", num_tiles=2)])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "batch.png")), pic)


def test_label_map_writer_writes_argmax_pngs_named_after_the_tiles(tmp_path):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 6, 7, generator=g)
    images = [
        MetaTensor(torch.rand(3, 6, 7) * 2 - 1, meta={"filename_or_obj": f"/data/tile_{i}.jpg"}) for i in range(3)
    ]
    outputs = [[{"image": images[0], "pred": logits[0]}, {"image": images[1], "pred": logits[1]}]]
    outputs.append([{"image": images[2], "pred": logits[2].argmax(0, keepdim=True)}])  # already a label map
    writer = LabelMapWriter(tmp_path / "out")
    _run(outputs, [writer])
    assert writer.written == 3
    for i in range(3):
        lab = np.asarray(Image.open(tmp_path / "out" / "labels" / f"tile_{i}.png"))
        assert lab.dtype == np.uint8 and lab.shape == (6, 7)
        np.testing.assert_array_equal(lab, logits[i].argmax(0).numpy())
        ov = np.asarray(Image.open(tmp_path / "out" / "overlays" / f"tile_{i}.png"))
        np.testing.assert_array_equal(ov, overlay(images[i], lab))
    assert sorted(os.listdir(tmp_path / "out" / "labels")) == [f"tile_{i}.png" for i in range(3)]


def test_label_map_writer_needs_a_tile_name(tmp_path):
    out = [[{"image": torch.zeros(3, 2, 2), "pred": torch.zeros(4, 2, 2)}]]
    with pytest.raises(ValueError, match="filename_or_obj"):
        _run(out, [LabelMapWriter(tmp_path)])
    _run(out, [LabelMapWriter(tmp_path, overlays=False, name_fn=lambda item: "named")])
    assert os.listdir(tmp_path / "labels") == ["named.png"] and not (tmp_path / "overlays").exists()
