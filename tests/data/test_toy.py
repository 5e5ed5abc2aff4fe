"""Tests for the procedural toy data set: SICAPv2 layout, PANDA slides, determinism, patterns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
from PIL import Image

from monai_disc.data.toy import (
    draw_mask,
    draw_tile,
    is_complete,
    make_toy_panda,
    make_toy_sicapv2,
    save_contact_sheet,
)

SMALL = {"n_slides": 6, "tile_size": 64, "seed": 3, "tiles_per_slide": (4, 7), "n_wsi": 1, "wsi_size": (512, 384)}
SHEET_COLUMNS = ["image_name", "NC", "G3", "G4", "G5", "G4C"]
VALUES = np.array([0, 3, 4, 5])


def _snap(mask: np.ndarray) -> np.ndarray:
    return np.abs(mask.astype(int)[..., None] - VALUES).argmin(-1)


def _labels_of(path: Path, min_fraction: float = 0.01) -> set[int]:
    """Labels covering a real part of a tile (JPEG noise leaves a few stray pixels at borders)."""
    counts = np.bincount(_snap(np.asarray(Image.open(path))).ravel(), minlength=4)
    return {int(k) for k in np.flatnonzero(counts >= min_fraction * counts.sum())}


def _sheets(root: Path) -> dict[str, pd.DataFrame]:
    out = {f"Test/{s}": pd.read_excel(root / "partition" / "Test" / f"{s}.xlsx") for s in ("Train", "Test")}
    for k in range(1, 5):
        for s in ("Train", "Test"):
            out[f"Val{k}/{s}"] = pd.read_excel(root / "partition" / "Validation" / f"Val{k}" / f"{s}.xlsx")
    return out


def _stem(name: str) -> str:
    return name.removesuffix(".jpg")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_toy_sicapv2(tmp_path_factory.mktemp("toy") / "sicap", num_workers=1, **SMALL)


def test_layout_has_sicapv2_files_and_sheet_columns(small):
    images = sorted(p.stem for p in (small / "images").glob("*.jpg"))
    masks = sorted(p.stem for p in (small / "masks").glob("*.jpg"))
    assert images == masks and 6 * 4 <= len(images) <= 6 * 7
    assert (small / "wsi_labels.xlsx").is_file()
    sheets = _sheets(small)
    for key, frame in sheets.items():
        assert list(frame.columns) == SHEET_COLUMNS, key
        assert len(frame) > 0, key
        assert (frame[SHEET_COLUMNS[1:]].sum(axis=1) == 1).all(), key  # one-hot
    # every tile is in the Test partition once; some names lack ".jpg" like the real sheets
    names = pd.concat([sheets["Test/Train"], sheets["Test/Test"]]).image_name
    assert sorted(_stem(n) for n in names) == images
    assert 0 < (~names.str.endswith(".jpg")).sum() < len(names)
    image = Image.open(small / "images" / f"{images[0]}.jpg")
    mask = Image.open(small / "masks" / f"{images[0]}.jpg")
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
    assert (mask.format, mask.mode, mask.size) == ("JPEG", "L", (64, 64))


def test_mask_values_are_sicapv2_values_within_jpeg_noise(small):
    for path in (small / "masks").glob("*.jpg"):
        mask = np.asarray(Image.open(path)).astype(int)
        distance = np.abs(mask[..., None] - VALUES).min(-1)
        assert distance.max() <= 1, path.name


def test_sheet_marks_most_frequent_label_of_mask(small):
    sheets = _sheets(small)
    frame = pd.concat([sheets["Test/Train"], sheets["Test/Test"]])
    for _, row in frame.iterrows():
        mask = _snap(np.asarray(Image.open(small / "masks" / f"{_stem(row.image_name)}.jpg")))
        top = int(np.bincount(mask.ravel(), minlength=4).argmax())
        marked = {0: row.NC, 1: row.G3, 2: row.G4 + row.G4C, 3: row.G5}
        assert marked[top] == 1, row.image_name


def test_slide_labels_agree_with_their_tiles(small):
    slides = pd.read_excel(small / "wsi_labels.xlsx")
    assert list(slides.columns) == ["slide_id", "patient_id", "Gleason_primary", "Gleason_secondary"]
    assert slides.slide_id.is_unique and len(slides) == 6
    to_label = {0: 0, 3: 1, 4: 2, 5: 3}
    for _, row in slides.iterrows():
        primary, secondary = to_label[row.Gleason_primary], to_label[row.Gleason_secondary]
        tiles = list((small / "masks").glob(f"{row.slide_id}_*.jpg"))
        assert tiles, row.slide_id
        seen = set().union(*(_labels_of(p) for p in tiles))
        assert seen <= {0, primary, secondary}, (row.slide_id, seen)
        assert {primary, secondary} <= seen, (row.slide_id, seen)
        assert all(p.name.split("_")[0] == row.slide_id for p in tiles)


def test_partitions_keep_each_patient_on_one_side(small):
    slides = pd.read_excel(small / "wsi_labels.xlsx")
    patient = dict(zip(slides.slide_id, slides.patient_id))
    sheets = _sheets(small)

    def patients(frame: pd.DataFrame) -> set[int]:
        return {patient[n.split("_")[0]] for n in frame.image_name}

    for part in ["Test", *(f"Val{k}" for k in range(1, 5))]:
        assert not patients(sheets[f"{part}/Train"]) & patients(sheets[f"{part}/Test"]), part
    n_patients = slides.patient_id.nunique()
    assert len(patients(sheets["Test/Test"])) == round(0.25 * n_patients)
    # the four folds split the Test partition's training patients
    folds = [patients(sheets[f"Val{k}/Test"]) for k in range(1, 5)]
    assert set().union(*folds) == patients(sheets["Test/Train"])
    assert sum(len(f) for f in folds) == len(patients(sheets["Test/Train"]))
    train_tiles = set(sheets["Test/Train"].image_name.map(_stem))
    for k in range(1, 5):
        fold_tiles = set(sheets[f"Val{k}/Train"].image_name.map(_stem)) | set(
            sheets[f"Val{k}/Test"].image_name.map(_stem)
        )
        assert fold_tiles == train_tiles


def test_panda_slides_open_as_pyramids_with_radboud_masks(small):
    table = pd.read_csv(small / "panda" / "train.csv")
    assert list(table.columns) == ["image_id", "data_provider", "isup_grade", "gleason_score"]
    image_id = table.image_id[0]
    with openslide.OpenSlide(small / "panda" / "train_images" / f"{image_id}.tiff") as slide:
        assert slide.level_count == 3
        assert slide.level_dimensions[0] == (512, 384)
        assert slide.level_downsamples[1] == pytest.approx(4.0)
        region = np.asarray(slide.read_region((0, 0), 1, (128, 96)).convert("RGB"))
        assert region.shape == (96, 128, 3)
        assert region.min() < 200 and region.max() > 220  # tissue and glass
    with openslide.OpenSlide(small / "panda" / "train_label_masks" / f"{image_id}_mask.tiff") as mask:
        assert mask.level_count == 3
        red = np.asarray(mask.read_region((0, 0), 0, mask.level_dimensions[0]))[..., 0]
        assert set(np.unique(red)) <= {0, 1, 2, 3, 4, 5}
        assert {0, 1} <= set(np.unique(red))  # glass and stroma at least


def test_panda_table_has_negative_and_graded_radboud_slides(tmp_path):
    root = make_toy_panda(tmp_path / "panda", n_slides=3, seed=1, size=(384, 256), n_levels=2)
    table = pd.read_csv(root / "train.csv")
    assert list(table.gleason_score) == ["negative", "3+4", "4+5"]
    assert list(table.isup_grade) == [0, 2, 5]
    assert set(table.data_provider) == {"radboud"}
    for image_id, score in zip(table.image_id, table.gleason_score):
        with openslide.OpenSlide(root / "train_label_masks" / f"{image_id}_mask.tiff") as mask:
            red = set(np.unique(np.asarray(mask.read_region((0, 0), 0, mask.level_dimensions[0]))[..., 0]))
        expected = {0, 1, 2} if score == "negative" else {0, 1, *map(int, score.split("+"))}
        assert red - {2} <= expected and {0, 1} <= red, (score, red)


def test_same_seed_gives_same_bytes_for_any_worker_count_and_other_seed_differs(small, tmp_path):
    again = make_toy_sicapv2(tmp_path / "again", num_workers=2, **SMALL)
    assert _files(again) == _files(small)
    other = make_toy_sicapv2(tmp_path / "other", num_workers=1, **{**SMALL, "seed": 4})
    a, b = _files(small), _files(other)
    assert [n for n in a if n.startswith("images/")] != [n for n in b if n.startswith("images/")]
    assert a["wsi_labels.xlsx"] != b["wsi_labels.xlsx"]


def test_finished_build_is_cached_and_killed_build_resumes_to_same_bytes(small, tmp_path):
    assert is_complete(small, **{k: v for k, v in SMALL.items()})
    assert not is_complete(small, seed=99)
    marker = small / ".toy_complete.json"
    stamp = marker.stat().st_mtime_ns
    make_toy_sicapv2(small, **SMALL)  # cached: nothing rewritten
    assert marker.stat().st_mtime_ns == stamp

    # a killed build leaves only its partial folder: some tiles and its arguments
    root = tmp_path / "resumed"
    partial = tmp_path / ".resumed.toy-partial"
    (partial / "images").mkdir(parents=True)
    (partial / "masks").mkdir()
    args = json.loads(marker.read_text())
    (partial / "build_args.json").write_text(json.dumps(args, sort_keys=True))
    for path in sorted((small / "images").glob("*.jpg"))[:5]:
        shutil.copy(path, partial / "images" / path.name)
        shutil.copy(small / "masks" / path.name, partial / "masks" / path.name)
    assert not is_complete(root)
    make_toy_sicapv2(root, num_workers=1, **SMALL)
    assert _files(root) == _files(small)
    assert not partial.exists()


def test_real_data_folder_is_never_replaced_but_an_older_toy_build_is(tmp_path):
    tiny = {"n_slides": 5, "tile_size": 32, "tiles_per_slide": (1, 2), "n_wsi": 0, "num_workers": 1}
    real = tmp_path / "sicapv2"
    (real / "images").mkdir(parents=True)
    (real / "images" / "mine.jpg").write_bytes(b"real tile")
    with pytest.raises(FileExistsError, match="sicapv2"):
        make_toy_sicapv2(real, **tiny)
    assert (real / "images" / "mine.jpg").read_bytes() == b"real tile"
    with pytest.raises(ValueError, match="n_slides"):
        make_toy_sicapv2(tmp_path / "x", n_slides=2)

    root = make_toy_sicapv2(tmp_path / "toy", seed=0, **tiny)
    first = sorted(p.name for p in (root / "images").iterdir())
    with pytest.raises(ValueError, match=r"toy holds outputs made with other settings \(seed: 0 -> 1\)"):
        make_toy_sicapv2(root, seed=1, **tiny)
    assert sorted(p.name for p in (root / "images").iterdir()) == first  # nothing touched
    make_toy_sicapv2(root, seed=1, overwrite=True, **tiny)
    assert is_complete(root, seed=1) and not is_complete(root, seed=0)
    second = sorted(p.name for p in (root / "images").iterdir())
    assert not set(first) & set(second)  # the old build's tiles are gone
    assert not list(tmp_path.glob(".toy.toy-partial"))


def test_grade_frequencies_follow_sicapv2_with_gg5_rarest(tmp_path):
    root = make_toy_sicapv2(tmp_path / "freq", n_slides=40, tile_size=32, n_wsi=0, num_workers=1)
    counts = np.zeros(4)
    for path in (root / "masks").glob("*.jpg"):
        counts += np.bincount(_snap(np.asarray(Image.open(path))).ravel(), minlength=4)
    share = counts / counts.sum()
    assert share.argmin() == 3 and share.argmax() == 0, share
    assert 0.03 < share[3] < 0.2 and 0.3 < share[0] < 0.55, share
    sheets = _sheets(root)
    frame = pd.concat([sheets["Test/Train"], sheets["Test/Test"]])
    assert 1000 < len(frame) < 2200
    assert frame.G4C.sum() > 0 and frame.G4.sum() > 0  # cribriform tiles are marked apart
    single = sum(len(_labels_of(p)) == 1 for p in (root / "masks").glob("*.jpg"))
    assert 0.4 < single / len(frame) < 0.85


def test_draw_mask_places_exactly_the_given_labels():
    rng = np.random.default_rng(0)
    mask = draw_mask(64, [0, 2, 3], rng)
    assert mask.shape == (64, 64) and mask.dtype == np.uint8
    counts = np.bincount(mask.ravel(), minlength=4)
    assert counts[1] == 0 and (counts[[0, 2, 3]] >= 0.05 * mask.size).all()
    assert (draw_mask((32, 48), [1], rng) == 1).all()
    with pytest.raises(ValueError, match="labels"):
        draw_mask(64, [4], rng)


def test_patterns_differ_by_structure():
    """Lumina (near-white) and nuclei (dark) set the four patterns apart, not the palette."""
    stats = []
    for label in range(4):
        white, dark = [], []
        for i in range(4):
            rng = np.random.default_rng(100 + i)
            tile = draw_tile(np.full((96, 96), label), rng).astype(float)
            grey = tile.mean(-1)
            white.append((grey > 215).mean())
            dark.append((grey < 120).mean())
        stats.append((np.mean(white), np.mean(dark)))
    white, dark = np.array(stats).T
    assert white[0] > white[2] > white[3] and white[1] > white[3]  # wide benign lumina, none in GG5
    assert white[3] < 0.02
    assert dark[3] > dark[2] > dark[0] and dark[3] > dark[1]  # GG5: sheets of nuclei
    tile = draw_tile(np.zeros((40, 40), dtype=np.uint8), np.random.default_rng(1))
    assert tile.shape == (40, 40, 3) and tile.dtype == np.uint8
    with pytest.raises(ValueError, match="mask"):
        draw_tile(np.full((8, 8), 5), np.random.default_rng(0))


def test_contact_sheet_shows_every_pattern(small, tmp_path):
    path = save_contact_sheet(small, tmp_path / "sheet.png", n=2, zoom=1)
    sheet = Image.open(path)
    assert sheet.format == "PNG" and sheet.width >= 64 + 2 * (2 * 64)
    assert sheet.height >= 2 * 64
    with pytest.raises(FileNotFoundError, match="images"):
        save_contact_sheet(tmp_path / "nothing", tmp_path / "x.png")


def test_panda_slides_alternate_providers_with_karolinska_masks(tmp_path):
    root = make_toy_panda(tmp_path / "panda", n_slides=3, seed=1, size=(384, 256), n_levels=2,
                          providers=("karolinska", "radboud"))  # fmt: skip
    table = pd.read_csv(root / "train.csv")
    assert list(table.data_provider) == ["karolinska", "radboud", "karolinska"]
    assert list(table.gleason_score) == ["0+0", "3+4", "4+5"]  # karolinska negatives are written 0+0
    for image_id, score in zip(table.image_id[::2], table.gleason_score[::2]):
        with openslide.OpenSlide(root / "train_label_masks" / f"{image_id}_mask.tiff") as mask:
            red = set(np.unique(np.asarray(mask.read_region((0, 0), 0, mask.level_dimensions[0]))[..., 0]))
        assert red == ({0, 1} if score == "0+0" else {0, 1, 2}), (score, red)  # benign 1, cancer 2, no grades
    with pytest.raises(ValueError, match="providers"):
        make_toy_panda(tmp_path / "bad", n_slides=1, size=(256, 256), providers=("leiden",))


_BUILD = """
import sys
from monai_disc.data.toy import make_toy_sicapv2
make_toy_sicapv2(sys.argv[1], n_slides=40, tile_size=128, n_wsi=2, num_workers=2)
"""


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_drawing_workers_end_when_the_build_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    build = subprocess.Popen([sys.executable, "-c", _BUILD, str(tmp_path / "toy")])
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:  # the pool's workers (and its resource tracker)
            workers = _children(build.pid)
            time.sleep(0.2)
        assert len(workers) >= 2, "the build never started its workers"
        time.sleep(2.0)  # workers are drawing
        build.send_signal(signal.SIGKILL)
        build.wait(timeout=30)
        deadline = time.monotonic() + 15
        alive = workers
        while alive and time.monotonic() < deadline:
            alive = [p for p in workers if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
            time.sleep(0.2)
        assert not alive, f"workers {alive} outlived the killed build"
    finally:
        build.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _hematoxylin(tile: np.ndarray) -> float:
    """Mean darkness of the blue-purple channel: crowded GG5 nuclei are darker than GG4's glands."""
    return float(255.0 - tile[..., 0].astype(float).mean())


def test_gg45_mix_brings_gg4_and_gg5_closer_and_zero_draws_the_default():
    from monai_disc.data.toy.plan import _rng

    gg4, gg5 = np.full((64, 64), 2, np.uint8), np.full((64, 64), 3, np.uint8)
    gaps = {}
    for mix in (0.0, 0.5):
        darkness = {
            label: np.mean([_hematoxylin(draw_tile(m, _rng(7, i), gg45_mix=mix)) for i in range(8)])
            for label, m in ((2, gg4), (3, gg5))
        }
        gaps[mix] = darkness[3] - darkness[2]
    assert gaps[0.0] > 3.0, gaps  # apart as drawn
    assert abs(gaps[0.5]) < 0.5 * gaps[0.0], gaps  # at half and half the two grades look alike
    same = draw_tile(gg5, _rng(1, 2)), draw_tile(gg5, _rng(1, 2), gg45_mix=0.0)
    assert np.array_equal(*same)
    with pytest.raises(ValueError, match="gg45_mix"):
        draw_tile(gg5, _rng(1, 2), gg45_mix=0.7)


def test_hard_config_records_its_knobs_and_splits_half_the_patients(tmp_path):
    from monai_disc.data.toy import TOY_CONFIGS

    kwargs = TOY_CONFIGS["hard"].build_kwargs() | {"n_slides": 24, "tiles_per_slide": (1, 2)}
    root = make_toy_sicapv2(tmp_path / "hard", seed=1, num_workers=1, **kwargs)
    marker = json.loads((root / ".toy_complete.json").read_text())
    assert marker["gg45_mix"] == 0.3 and marker["test_share"] == 0.5 and marker["gleason_pairs"][5] == [[2, 3], 0.05]
    assert is_complete(root, gleason_pairs=kwargs["gleason_pairs"], gg45_mix=0.3)
    assert not is_complete(root, gg45_mix=0.2)
    slides = pd.read_excel(root / "wsi_labels.xlsx")
    patient = dict(zip(slides.slide_id, slides.patient_id))
    test_patients = {patient[n.split("_")[0]] for n in _sheets(root)["Test/Test"].image_name}
    assert 0.4 <= len(test_patients) / slides.patient_id.nunique() <= 0.6  # half the patients, not a quarter
    default = make_toy_sicapv2(tmp_path / "default", n_slides=6, tile_size=64, n_wsi=0, tiles_per_slide=(1, 2))
    keys = set(json.loads((default / ".toy_complete.json").read_text()))
    assert not keys & {"gleason_pairs", "gg45_mix", "test_share"}  # default builds record what they always did
    with pytest.raises(ValueError, match="test_share"):
        make_toy_sicapv2(tmp_path / "bad", n_slides=6, test_share=1.0)
