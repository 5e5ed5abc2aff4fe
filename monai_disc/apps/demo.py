"""`monai-disc demo`: the main job on the embedded toy data, end to end with the shipped weights.

Builds (or reuses) the toy SICAPv2 set, writes its contact sheet, prints its summary, draws tiles for held-out
toy masks with the default generator (:data:`monai_disc.inferers.DEFAULT_GENERATOR`, or ``generator``), grades
real and generated tiles with the CarcinoNet ruler, draws a few planned synthetic slides, runs a small lambda sweep
of the toy TransMIL with them (the paper's Figure 6 in miniature), compares the registered generators when their
weights are shipped, and writes the pictures.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from monai_disc.apps.compare import format_comparison, held_out_masks, run_comparison
from monai_disc.apps.generate_slides import generate_slides
from monai_disc.apps.sweep import format_sweep, lambda_sweep
from monai_disc.bundles import CARCINONET_WEIGHTS, TRANSMIL_WEIGHTS, bundle_file
from monai_disc.data import format_summary, load_sicapv2, make_toy_sicapv2, save_contact_sheet, summarize_sicapv2
from monai_disc.data.synthetic import IMAGES_DIR, MASKS_DIR
from monai_disc.data.tilesets import load_sicapv2_bags, load_synthetic_bags
from monai_disc.inferers import (
    DEFAULT_GENERATOR,
    DEFAULT_NUM_INFERENCE_STEPS,
    GENERATORS,
    LDMGenerator,
    load_generator,
)
from monai_disc.io import atomic_write_text, compare_settings, settings_error
from monai_disc.labels import LABEL_NAMES, NUM_CLASSES, colorize
from monai_disc.masks import ShapeBank, plan_synthetic_slides
from monai_disc.metrics import MaskFidelity
from monai_disc.networks import build_extractor, carcinonet_toy, extract_bag_features, load_weights
from monai_disc.visualize import overlay, save_grid, save_picture

__all__ = ["run_demo"]


def _format_scores(title: str, scores: dict, masks: torch.Tensor) -> str:
    """The ruler's scores, each class's IoU beside the truth pixels it rests on (a tiny class gives a shaky IoU)."""
    counts = torch.bincount(masks.reshape(-1).long(), minlength=NUM_CLASSES).tolist()
    iou = "  ".join(f"{n} {v:.3f} ({c} px)" for n, v, c in zip(LABEL_NAMES, scores["iou"], counts))
    line = f"{title}: mIoU {scores['miou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f}, IoU {iou}"
    scarce = [f"{n} ({c} of {masks.numel()} px)" for n, c in zip(LABEL_NAMES, counts) if c < 0.01 * masks.numel()]
    if scarce:
        line += (
            f"\n  note: {', '.join(scarce)} covers under 1 % of these masks, so its IoU rests on a few pixels "
            "(0.000 can mean the ruler missed one small region); the bundle README gives the full test split"
        )
    return line


def run_demo(
    out: str | os.PathLike,
    bundles_dir: str | os.PathLike | None = None,
    generator: str = DEFAULT_GENERATOR,
    seed: int = 0,
    num_tiles: int = 8,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = 1.0,
    n_slides: int = 40,
    tile_size: int = 128,
    overwrite: bool = False,
) -> dict:
    """Run the demo into `out`; return the figures it printed.

    Args:
        out: output folder (the toy set is cached in ``out/toy``).
        bundles_dir: folder holding the bundles and their ``models/`` weights; None: the source checkout's.
        generator: the registered generator that draws the tiles and the synthetic slides.
        seed: noise seed of the first generated tile.
        num_tiles: held-out masks to draw for.
        num_inference_steps: DDIM steps of every generator (the paper's 200 cost four times as long as 50).
        guidance_scale: classifier-free guidance weight of every generator (1: plain sampling, the paper's).
        n_slides: slides of the toy set.
        tile_size: toy tile size in pixels.
        overwrite: replace the toy set and cached outputs of an earlier demo run with other settings.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sampling = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
    _check_settings(out, {"generator": generator, "seed": seed, "num_tiles": num_tiles, **sampling,
                          "n_slides": n_slides, "tile_size": tile_size}, overwrite)  # fmt: skip
    start = time.perf_counter()
    root = make_toy_sicapv2(out / "toy", n_slides=n_slides, tile_size=tile_size, seed=seed, overwrite=overwrite)
    sheet = save_contact_sheet(root, out / "toy_preview.png")
    print(f"toy data: {root} ({time.perf_counter() - start:.1f} s); contact sheet: {sheet}")
    print(format_summary(summarize_sicapv2(root)))

    gen = load_generator(generator, bundles_dir, **sampling)
    ruler = load_weights(carcinonet_toy(), bundle_file(CARCINONET_WEIGHTS, bundles_dir))

    masks, tiles = held_out_masks(root, num_tiles)
    # the LDM was trained on 64 px crops; a crop keeps two or more labels of its mask
    masks64, tiles64 = held_out_masks(root, num_tiles, size=64)
    mask_dir = out / "masks"  # the LDM bundles' default input folder: PNG label maps 0..3
    for i, m in enumerate(masks64):
        save_picture(m.numpy().astype(np.uint8), mask_dir / f"heldout_{i:02d}.png")

    start = time.perf_counter()
    generated = gen.sample(masks64, range(seed, seed + len(masks64)))
    per_tile = (time.perf_counter() - start) / len(masks64)

    real, real64, synthetic = MaskFidelity(ruler), MaskFidelity(ruler), MaskFidelity(ruler)
    real(tiles, masks)
    real64(tiles64, masks64)
    synthetic(generated, masks64)
    figures = {
        "real": real.aggregate(),
        "real_64px": real64.aggregate(),
        "generated_64px": synthetic.aggregate(),
        "seconds_per_tile": per_tile,
        "generator": gen.name,
        **sampling,
    }
    print(_format_scores("CarcinoNet on held-out real toy tiles", figures["real"], masks))
    print(_format_scores("CarcinoNet on their 64 px crops", figures["real_64px"], masks64))
    print(
        _format_scores(
            f"CarcinoNet on {gen.name} tiles for the same 64 px masks ({num_inference_steps} DDIM steps)",
            figures["generated_64px"],
            masks64,
        )
    )
    print(f"{gen.name} sampling: {per_tile:.2f} s per 64 px tile on {'GPU' if torch.cuda.is_available() else 'CPU'}")

    predicted = real.segment(tiles)
    rows = [
        [colorize(m.numpy()), t64, g, overlay(g, m), overlay(g, s)]
        for t64, m, g, s in zip(tiles64, masks64, generated, synthetic.segment(generated))
    ]
    pictures = [sheet]
    pictures.append(
        save_grid(
            rows, out / "generated_grid.png", legend_colors=True, zoom=2,
            titles=["mask", "real", gen.name, f"{gen.name} + mask", f"{gen.name} + ruler"],
            title=f"{gen.name} tiles for held-out 64 px masks ({num_inference_steps} DDIM steps)",
        )
    )  # fmt: skip
    pictures.append(
        save_grid(
            [[t, overlay(t, m), overlay(t, p)] for t, m, p in zip(tiles, masks, predicted)],
            out / "carcinonet_overlays.png", titles=["tile", "truth", "CarcinoNet"], legend_colors=True,
            title="CarcinoNet (the ruler) on held-out real toy tiles",
        )
    )  # fmt: skip
    figures["masks_for_bundles"] = str(mask_dir)
    print(f"{len(masks64)} held-out masks for the LDM bundles' inference: {mask_dir}")
    figures["synthetic_slides"] = _synthetic_slides(root, out / "synthetic_slides", gen)
    pictures.append(Path(figures["synthetic_slides"]))
    figures["lambda_sweep"] = _lambda_sweep(root, out, out / "synthetic_slides", gen.name, bundles_dir, seed)
    pictures.append(out / "lambda_sweep" / "sweep.png")
    if (root / "panda" / "train.csv").is_file():
        figures["panda"] = _panda_evaluation(root / "panda", out, bundles_dir, tile_size)
        pictures += sorted((out / "panda_tiles" / "thumbnails").glob("*.png"))[:1]
    if all(bundle_file(entry.weights, bundles_dir).is_file() for entry in GENERATORS.values()):
        result = run_comparison(
            root, out / "compare", bundles_dir=bundles_dir, num_masks=num_tiles, seed=seed, **sampling
        )
        print(format_comparison(result))
        figures["compare"] = str(out / "compare" / "compare.md")
        pictures += sorted((out / "compare").glob("*.png"))
    (out / "demo_figures.json").write_text(json.dumps(figures, indent=1, default=float))
    figures["pictures"] = [str(p) for p in pictures]
    print(f"figures: {out / 'demo_figures.json'}; pictures: {', '.join(str(p) for p in pictures)}")
    return figures


_DEMO_SETTINGS = "demo_settings.json"
_DERIVED = ("masks", "synthetic_slides", "features", "lambda_sweep", "compare", "panda_tiles", "panda_features")


def _check_settings(out: Path, settings: dict, overwrite: bool) -> None:
    """The demo's outputs are reused only with the same settings; ``overwrite`` clears them (the toy set has its own)."""
    differences = compare_settings(out / _DEMO_SETTINGS, settings)
    if differences and not overwrite:
        raise settings_error(out, differences)
    if differences or overwrite:
        for name in _DERIVED:
            shutil.rmtree(out / name, ignore_errors=True)
    atomic_write_text(out / _DEMO_SETTINGS, json.dumps(settings, indent=1, sort_keys=True) + "\n")


def _spread_over_grades(plans: list, n: int) -> list:
    """Up to ``n`` plans taken in turn from each (primary, secondary) pair, so a few slides cover every grade."""
    pairs: dict[tuple[int, int], list] = {}
    for plan in plans:
        pairs.setdefault((plan.primary, plan.secondary), []).append(plan)
    picked, queues = [], [list(v) for _, v in sorted(pairs.items(), key=lambda kv: (-kv[0][0], -kv[0][1]))]
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


def _synthetic_slides(root: Path, out: Path, generator: LDMGenerator, num_slides: int = 8) -> str:
    """A few planned synthetic slides drawn by ``generator`` across the primary/secondary grades, and one as a grid."""
    bank = ShapeBank.from_data_list(load_sicapv2(root, "Test", "Train"), size=64)
    # the plans come sorted by grade: taking the first ones would give NC slides only
    plans = _spread_over_grades(plan_synthetic_slides(root, bank, target=100, n_tiles=(8, 12)), num_slides)
    start = time.perf_counter()
    generate_slides(plans, out, generator, bank, progress=False)
    seconds = (time.perf_counter() - start) / sum(p.n_tiles for p in plans)
    shown = next((p for p in plans if p.primary != p.secondary and p.primary and p.secondary), plans[0])
    first = out / shown.slide_id
    tiles = [np.asarray(Image.open(p)) for p in sorted((first / IMAGES_DIR).glob("*.png"))]
    masks = [colorize(np.asarray(Image.open(p))) for p in sorted((first / MASKS_DIR).glob("*.png"))]
    grades = f"primary {LABEL_NAMES[shown.primary]}, secondary {LABEL_NAMES[shown.secondary]}"
    grid = save_grid(
        [tiles, masks], out / "slide_grid.png", legend_colors=True, zoom=2,
        title=f"synthetic slide {shown.slide_id} ({grades}): {generator.name} tiles above the masks they follow",
    )  # fmt: skip
    drawn = ", ".join(f"{LABEL_NAMES[p.primary]}+{LABEL_NAMES[p.secondary]}" for p in plans)
    print(f"{len(plans)} synthetic slides ({drawn}) in {out} ({seconds:.2f} s per tile); {shown.slide_id}: {grid}")
    return str(grid)


def _lambda_sweep(
    root: Path, out: Path, slides: Path, name: str, bundles_dir: str | os.PathLike | None, seed: int
) -> str:
    """Toy TransMIL on real bags, alone (lambda 0) and mixed with the synthetic slides of generator ``name``, on the
    bundle's real splits.

    Real bags: Val1/Train to train, Val1/Test to validate, Test/Test to score (as bundle transmil's
    extract_features.yaml); features from the toy CarcinoNet encoder for real and synthetic tiles alike.
    """
    extractor = build_extractor("carcinonet_toy", weights=bundle_file(CARCINONET_WEIGHTS, bundles_dir))
    features = out / "features"
    real = {"train": ("Val1", "Train"), "val": ("Val1", "Test"), "test": ("Test", "Test")}
    for name, (partition, split) in real.items():
        extract_bag_features(load_sicapv2_bags(root, partition, split), extractor, features / name, progress=False)
    extract_bag_features(load_synthetic_bags(slides), extractor, features / "synthetic", progress=False)
    start = time.perf_counter()
    summary = lambda_sweep(
        features / "train", features / "val", {"toy": features / "test"}, {name: features / "synthetic"},
        lambdas=(0.0, 0.3, 0.7), seeds=(seed,), out_dir=out / "lambda_sweep", progress=False,
        network="transmil_toy", max_epochs=20, patience=5, tensorboard=False,
    )  # fmt: skip
    print(format_sweep(summary))
    print(f"lambda sweep: {time.perf_counter() - start:.0f} s; {out / 'lambda_sweep' / 'sweep.png'}")
    print(_sweep_sentence(summary, features, name))
    return str(out / "lambda_sweep" / "sweep.md")


def _panda_evaluation(panda: Path, out: Path, bundles_dir: str | os.PathLike | None, tile_size: int) -> dict:
    """The toy PANDA slides tiled (at the toy's 2 um/px), embedded from the slides, and scored by the shipped
    toy TransMIL: AUROC per class and macro, overall and per provider."""
    from monai_disc.apps.tile_slides import panda_slides, tile_slides
    from monai_disc.data.wsi import SlideTileLoader, load_wsi_bags
    from monai_disc.engines.panda import evaluate_panda, format_panda_auroc, load_transmil

    start = time.perf_counter()
    tiled = tile_slides(panda_slides(panda), out / "panda_tiles", tile_size=tile_size, mpp=2.0, progress=False)
    extractor = build_extractor("carcinonet_toy", weights=bundle_file(CARCINONET_WEIGHTS, bundles_dir))
    extract_bag_features(
        load_wsi_bags(out / "panda_tiles"), extractor, out / "panda_features", progress=False,
        loader=SlideTileLoader(tile_size),
    )  # fmt: skip
    model = load_transmil(bundle_file(TRANSMIL_WEIGHTS, bundles_dir), extractor.num_features)
    result = evaluate_panda(model, out / "panda_features", panda)
    n_tiles = sum(r["n_tiles"] for r in tiled.rows)
    print(f"PANDA (toy): {len(tiled.rows)} slides, {n_tiles} tiles; {out / 'panda_tiles' / 'thumbnails'}")
    print(format_panda_auroc(result))
    print(f"PANDA evaluation: {time.perf_counter() - start:.1f} s")
    return result


def _sweep_sentence(summary: pd.DataFrame, features: Path, name: str) -> str:
    """What the miniature sweep shows, and how small it is."""
    from monai_disc.networks import FeatureBagDataset

    counts = {folder: len(FeatureBagDataset(features / folder)) for folder in ("train", "test", "synthetic")}
    labels = np.stack([FeatureBagDataset(features / "test")[i]["label"].numpy() for i in range(counts["test"])])
    pos = labels.sum(axis=0)
    pairs = [p * (counts["test"] - p) for p in pos if 0 < p < counts["test"]]
    step = 100.0 / min(pairs) if pairs else float("nan")
    part = summary[summary["test"] == summary["test"].iloc[0]].sort_values("lam")
    macro = ", ".join(f"{100 * m:.1f} at lambda {lam:g}" for lam, m in zip(part["lam"], part["macro_mean"]))
    return (
        f"What the sweep shows: the toy TransMIL trained on {counts['train']} real slides, alone and mixed with "
        f"{counts['synthetic']} {name} slides, one seed, scored on {counts['test']} test slides (macro AUROC {macro}). At "
        f"this size one pair of test slides ranked the other way moves a class's AUROC by up to {step:.0f} "
        "points, so the sweep checks that the pipeline runs end to end; it does not measure the paper's gain "
        "(Figure 6: 155 real slides, 276 synthetic, several seeds; see docs/generators.md for the toy sweep)."
    )
