"""`monai-disc demo`: the main job on the embedded toy data, end to end with the shipped weights, in minutes.

Six steps, each with a picture and a line that says what it shows:

1. the toy SICAPv2 set (procedural Gleason-like tissue and masks) and its contact sheet;
2. tiles drawn for held-out toy masks by the default generator (:data:`monai_disc.inferers.DEFAULT_GENERATOR`), read
   back by the ruler (the toy CarcinoNet segmenter): how well the tiles follow their masks;
3. the ruler on real held-out tiles, so its reading of generated tiles can be judged;
4. planned synthetic slides across the primary/secondary grades;
5. scarce real slides: the toy TransMIL trained on 8 real slides alone and with the synthetic slides (lambda 0.5),
   three paired seeds, each seed drawn: where the paper's method matters;
6. whole slides: the toy PANDA slides tiled at 2 um/px and read by the shipped TransMIL, slide by slide.

The last lines say what was shown and where to look next.
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

from monai_disc.apps.compare import EvaluationCounter, held_out_masks
from monai_disc.apps.generate_slides import generate_slides
from monai_disc.apps.sweep import lambda_sweep
from monai_disc.bundles import CARCINONET_WEIGHTS, TRANSMIL_WEIGHTS, bundle_file
from monai_disc.data import format_summary, load_sicapv2, make_toy_sicapv2, save_contact_sheet, summarize_sicapv2
from monai_disc.data.synthetic import IMAGES_DIR, MASKS_DIR
from monai_disc.data.tilesets import load_sicapv2_bags, load_synthetic_bags
from monai_disc.inferers import DEFAULT_GENERATOR, LDMGenerator, load_generator
from monai_disc.io import atomic_write_text, compare_settings, settings_error
from monai_disc.labels import LABEL_NAMES, NUM_CLASSES, colorize
from monai_disc.masks import ShapeBank, plan_synthetic_slides, plans_in_turn
from monai_disc.metrics import MaskFidelity
from monai_disc.networks import FeatureBagDataset, build_extractor, carcinonet_toy, extract_bag_features, load_weights
from monai_disc.visualize import OVERLAY_NOTE, overlay, save_figure, save_grid, save_picture

__all__ = ["run_demo"]

#: what "ruler" means on every picture and line that shows one
RULER = "ruler = the toy CarcinoNet segmenter reading a tile back"
#: real training slides of the scarce-slides step, and its seeds
SCARCE_SLIDES, SCARCE_SEEDS, SCARCE_LAMBDA = 8, 3, 0.5


def _format_scores(title: str, scores: dict, masks: torch.Tensor, note: bool = True) -> str:
    """The ruler's scores, each class's IoU beside the truth pixels it rests on (a tiny class gives a shaky IoU),
    and with ``note`` a line flagging the classes too small to score."""
    counts = torch.bincount(masks.reshape(-1).long(), minlength=NUM_CLASSES).tolist()
    iou = "  ".join(f"{n} {v:.3f} ({c} px)" for n, v, c in zip(LABEL_NAMES, scores["iou"], counts))
    line = f"{title}: mIoU {scores['miou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f}, IoU {iou}"
    scarce = [f"{n} ({c} of {masks.numel()} px)" for n, c in zip(LABEL_NAMES, counts) if c < 0.01 * masks.numel()]
    if scarce and note:
        line += (
            f"\n  note: {', '.join(scarce)} covers under 1 % of these masks, so its IoU rests on a few pixels "
            "(0.000 can mean the ruler missed one small region); the bundle README gives the full test split"
        )
    return line


def _step(number: int, text: str) -> None:
    print(f"\n[{number}/6] {text}")


def run_demo(
    out: str | os.PathLike,
    bundles_dir: str | os.PathLike | None = None,
    generator: str = DEFAULT_GENERATOR,
    seed: int = 0,
    num_tiles: int = 8,
    num_inference_steps: int | None = None,
    guidance_scale: float = 1.0,
    n_slides: int = 40,
    tile_size: int = 128,
    num_synthetic_slides: int = 16,
    overwrite: bool = False,
) -> dict:
    """Run the demo into `out`; return the figures it printed.

    Args:
        out: output folder (the toy set is cached in ``out/toy``).
        bundles_dir: folder holding the bundles and their ``models/`` weights; None: the source checkout's.
        generator: the registered generator that draws the tiles and the synthetic slides.
        seed: noise seed of the first generated tile, and the first training seed of step 5.
        num_tiles: held-out masks to draw for.
        num_inference_steps: solver steps of the generator; None: its registry entry's own (e.g. SD-GD's PLMS 3
            steps, 4 network evaluations per tile).
        guidance_scale: classifier-free guidance weight of the generator (1: plain sampling).
        n_slides: slides of the toy set.
        tile_size: toy tile size in pixels.
        num_synthetic_slides: synthetic slides drawn for step 5.
        overwrite: replace the toy set and cached outputs of an earlier demo run with other settings.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sampling = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
    settings = {"generator": generator, "seed": seed, "num_tiles": num_tiles, **sampling, "n_slides": n_slides,
                "tile_size": tile_size, "num_synthetic_slides": num_synthetic_slides}  # fmt: skip
    _check_settings(out, settings, overwrite)
    begin = time.perf_counter()

    _step(1, "the embedded toy data: procedural Gleason-like tissue with annotator-like masks (SICAPv2 layout)")
    start = time.perf_counter()
    root = make_toy_sicapv2(out / "toy", n_slides=n_slides, tile_size=tile_size, seed=seed, overwrite=overwrite)
    sheet = save_contact_sheet(root, out / "toy_preview.png")
    print(f"toy data: {root} ({time.perf_counter() - start:.1f} s); contact sheet: {sheet}")
    print(format_summary(summarize_sicapv2(root)))

    gen = load_generator(generator, bundles_dir, **sampling)
    ruler = load_weights(carcinonet_toy(), bundle_file(CARCINONET_WEIGHTS, bundles_dir))
    figures: dict = {"generator": gen.name, **sampling}
    pictures = [sheet]
    pictures += _tiles_from_masks(root, out, gen, ruler, num_tiles, seed, figures)
    figures["synthetic_slides"] = _synthetic_slides(root, out / "synthetic_slides", gen, num_synthetic_slides)
    pictures.append(Path(figures["synthetic_slides"]))
    figures["scarce_slides"] = _scarce_slides(root, out, out / "synthetic_slides", gen.name, bundles_dir, seed)
    pictures.append(out / "scarce_slides.png")
    if (root / "panda" / "train.csv").is_file():
        figures["whole_slides"] = _whole_slides(root / "panda", out, bundles_dir, tile_size)
        pictures.append(out / "panda_slide.png")
    figures["seconds"] = time.perf_counter() - begin
    atomic_write_text(out / "demo_figures.json", json.dumps(figures, indent=1, default=float))
    figures["pictures"] = [str(p) for p in pictures]
    _closing(out, figures)
    return figures


def _tiles_from_masks(
    root: Path, out: Path, gen: LDMGenerator, ruler: torch.nn.Module, num_tiles: int, seed: int, figures: dict
) -> list[Path]:
    """Steps 2 and 3: tiles for held-out masks, the ruler's reading of them and of real tiles; two pictures."""
    _step(2, f"{gen.name} paints tiles for {num_tiles} held-out toy masks; the ruler reads them back")
    masks, tiles = held_out_masks(root, num_tiles)
    # the LDM was trained on 64 px crops; a crop keeps two or more labels of its mask
    masks64, tiles64 = held_out_masks(root, num_tiles, size=64)
    mask_dir = out / "masks"  # the LDM bundles' default input folder: PNG label maps 0..3
    for i, m in enumerate(masks64):
        save_picture(m.numpy().astype(np.uint8), mask_dir / f"heldout_{i:02d}.png")
    start = time.perf_counter()
    with EvaluationCounter(gen.denoiser) as counter:  # network evaluations as run, not as computed from settings
        generated = gen.sample(masks64, range(seed, seed + len(masks64)))
    per_tile = (time.perf_counter() - start) / len(masks64)
    evaluations = counter.samples // len(masks64)
    sampling = f"{evaluations} network evaluations per tile"
    real, real64, synthetic = MaskFidelity(ruler), MaskFidelity(ruler), MaskFidelity(ruler)
    real(tiles, masks)
    real64(tiles64, masks64)
    synthetic(generated, masks64)
    figures.update(real=real.aggregate(), real_64px=real64.aggregate(), generated_64px=synthetic.aggregate(),
                   seconds_per_tile=per_tile, network_evaluations_per_tile=evaluations,
                   masks_for_bundles=str(mask_dir))  # fmt: skip
    print(_format_scores(f"{gen.name} tiles ({sampling}), read by the ruler", figures["generated_64px"],
                         masks64))  # fmt: skip
    print(_format_scores("the real tiles of the same masks, read by the ruler", figures["real_64px"], masks64, False))
    device = "GPU" if torch.cuda.is_available() else "CPU"
    print(f"{gen.name}: {per_tile:.2f} s per 64 px tile ({sampling}, a batch of {len(masks64)} on the "
          f"{device}); {len(masks64)} held-out masks for the LDM bundles' inference: {mask_dir}")  # fmt: skip
    rows = [
        [colorize(m.numpy()), t64, g, overlay(g, m), overlay(g, s)]
        for t64, m, g, s in zip(tiles64, masks64, generated, synthetic.segment(generated))
    ]
    grid = save_grid(
        rows, out / "generated_grid.png", legend_colors=True, zoom=2,
        titles=["mask", "real", gen.name, "+ mask", "+ ruler"], legend_note=OVERLAY_NOTE,
        title=f"{gen.name} tiles for held-out 64 px masks ({sampling}); {RULER}",
    )  # fmt: skip
    print(f"picture: {grid} (mask, the real tile, {gen.name}'s tile, the mask and the ruler's reading over it)")

    _step(3, "the ruler on held-out real toy tiles: how far its reading of generated tiles can be trusted")
    print(_format_scores("real 128 px tiles, read by the ruler", figures["real"], masks))
    predicted = real.segment(tiles)
    overlays = save_grid(
        [[t, overlay(t, m), overlay(t, p)] for t, m, p in zip(tiles, masks, predicted)],
        out / "carcinonet_overlays.png", titles=["tile", "truth", "ruler"], legend_colors=True, legend_note=OVERLAY_NOTE,
        title=f"the ruler on held-out real toy tiles ({RULER})",
    )  # fmt: skip
    print(f"picture: {overlays}")
    return [grid, overlays]


_DEMO_SETTINGS = "demo_settings.json"
_DERIVED = ("masks", "synthetic_slides", "features", "scarce_slides", "panda_tiles", "panda_features")


def _check_settings(out: Path, settings: dict, overwrite: bool) -> None:
    """The demo's outputs are reused only with the same settings; ``overwrite`` clears them (the toy set has its own)."""
    differences = compare_settings(out / _DEMO_SETTINGS, settings)
    if differences and not overwrite:
        raise settings_error(out, differences)
    if differences or overwrite:
        for name in _DERIVED:
            shutil.rmtree(out / name, ignore_errors=True)
    atomic_write_text(out / _DEMO_SETTINGS, json.dumps(settings, indent=1, sort_keys=True) + "\n")


def _synthetic_slides(root: Path, out: Path, generator: LDMGenerator, num_slides: int) -> str:
    """Step 4: planned synthetic slides drawn by ``generator`` across the primary/secondary grades, one as a grid."""
    _step(4, f"{num_slides} synthetic slides planned across the grades and drawn by {generator.name}")
    bank = ShapeBank.from_data_list(load_sicapv2(root, "Test", "Train"), size=64)
    plans = plans_in_turn(plan_synthetic_slides(root, bank, target=100, n_tiles=(8, 12)), num_slides,
                          key=lambda plan: (-plan.primary, -plan.secondary))  # fmt: skip
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
    print(f"slides (primary+secondary): {drawn}; {seconds:.2f} s per tile drawn and written; {out}")
    print(
        f"picture: {grid}. The faint bright bottom edge and the speckled bottom-left corner of dense tiles come from "
        "the toy autoencoder (its real tiles, encoded and decoded, show them too; docs/quickstart.md)"
    )
    return str(grid)


def _scarce_slides(
    root: Path, out: Path, slides: Path, generator: str, bundles_dir: str | os.PathLike | None, seed: int
) -> dict:
    """Step 5: the toy TransMIL trained on a few real slides, alone and with the synthetic slides, paired seeds.

    Real bags: the first :data:`SCARCE_SLIDES` of Val1/Train by slide id to train, Val1/Test to validate, Test/Test
    to score (as bundle transmil's extract_features.yaml); the toy CarcinoNet encoder embeds real and synthetic
    tiles alike. Each seed trains both arms from the same initialisation on the same real slides.
    """
    seeds = tuple(range(seed, seed + SCARCE_SEEDS))
    _step(5, f"scarce real slides: TransMIL on {SCARCE_SLIDES} real slides, alone and with {generator}'s synthetic "
             f"slides (lambda {SCARCE_LAMBDA:g}), {len(seeds)} paired seeds")  # fmt: skip
    start = time.perf_counter()
    extractor = build_extractor("carcinonet_toy", weights=bundle_file(CARCINONET_WEIGHTS, bundles_dir))
    features = out / "features"
    bags = {
        "train": sorted(load_sicapv2_bags(root, "Val1", "Train"), key=lambda b: str(b["slide_id"]))[:SCARCE_SLIDES],
        "val": load_sicapv2_bags(root, "Val1", "Test"),
        "test": load_sicapv2_bags(root, "Test", "Test"),
        "synthetic": load_synthetic_bags(slides),
    }
    for folder, items in bags.items():
        extract_bag_features(items, extractor, features / folder, progress=False)
    train, test, synthetic = (FeatureBagDataset(features / f) for f in ("train", "test", "synthetic"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a toy TransMIL step is a few hundred small ops: more threads only wait on each other
    try:
        summary = lambda_sweep(
            train, features / "val", {"toy": test}, {generator: synthetic}, lambdas=(0.0, SCARCE_LAMBDA), seeds=seeds,
            out_dir=out / "scarce_slides", progress=False, network="transmil_toy", max_epochs=20, patience=5,
            tensorboard=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    rows = pd.read_csv(out / "scarce_slides" / "sweep.csv")
    arms = {
        f"{SCARCE_SLIDES} real": rows[rows["lam"] == 0.0].sort_values("seed"),
        f"+ {len(synthetic)} {generator}": rows[rows["lam"] == SCARCE_LAMBDA].sort_values("seed"),
    }
    title = (f"TransMIL on {SCARCE_SLIDES} real toy slides, alone and with {len(synthetic)} synthetic {generator} "
             f"slides (lambda {SCARCE_LAMBDA:g}); {len(test)} test slides, {len(seeds)} seeds")  # fmt: skip
    _plot_paired(arms, out / "scarce_slides.png", title)
    result = {}
    for metric, name in (("macro_auroc", "macro AUROC"), ("gg5_auroc", "GG5 AUROC")):
        base, mixed = (100 * arm[metric].to_numpy() for arm in arms.values())
        result[metric] = {"real": base.tolist(), "mixed": mixed.tolist()}
        print(f"{name}: {base.mean():.1f} with real slides only, {mixed.mean():.1f} with synthetic slides "
              f"(per seed: {', '.join(f'{a:.1f} -> {b:.1f}' for a, b in zip(base, mixed))})")  # fmt: skip
    print(
        f"What it shows: with {SCARCE_SLIDES} real slides the grader is off its ceiling, and synthetic slides move it; "
        f"{len(test)} test slides and {len(seeds)} seeds cannot tell a gain of a few points from noise (one test "
        "slide ranked the other way moves a class's AUROC by several points). `monai-disc study` measures it with "
        f"power (docs/downstream.md). {time.perf_counter() - start:.0f} s; picture: {out / 'scarce_slides.png'}"
    )
    result["summary"] = summary.to_dict("records")
    return result


def _plot_paired(arms: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Macro and GG5 AUROC of each arm: one line per seed joining its arms (the pairing), the mean as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    names = list(arms)
    for ax, (metric, label) in zip(axes, (("macro_auroc", "macro AUROC"), ("gg5_auroc", "GG5 AUROC"))):
        values = np.stack([100 * arms[n][metric].to_numpy() for n in names])  # (arm, seed)
        ax.bar(range(len(names)), values.mean(axis=1), color=["0.75", "tab:blue"][: len(names)], width=0.5,
               label="mean over seeds")  # fmt: skip
        for k in range(values.shape[1]):
            ax.plot(range(len(names)), values[:, k], marker="o", color="black", alpha=0.6, lw=1, clip_on=False,
                    label="one seed (same real slides and initialisation)" if k == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(names)), names)
        low = float(np.nanmin(values))
        ax.set_ylim(max(0.0, min(50.0, low - 10.0)), 100.0)
        ax.set_ylabel(f"{label} (x 100, test slides)")
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", loc="lower left")
    fig.suptitle(title, fontsize="medium")
    return save_figure(fig, path)


def _whole_slides(panda: Path, out: Path, bundles_dir: str | os.PathLike | None, tile_size: int) -> list[dict]:
    """Step 6: the toy PANDA slides tiled (at the toy's 2 um/px), embedded from the slides, and read slide by slide
    by the shipped toy TransMIL."""
    from monai_disc.apps.tile_slides import panda_slides, tile_slides
    from monai_disc.data.wsi import SlideTileLoader, load_wsi_bags
    from monai_disc.engines.panda import load_transmil, panda_slide_logits

    _step(6, "whole slides: the toy PANDA slides (pyramidal TIFF), tiled at 2 um/px and read by the shipped TransMIL")
    start = time.perf_counter()
    tiled = tile_slides(panda_slides(panda), out / "panda_tiles", tile_size=tile_size, mpp=2.0, progress=False)
    extractor = build_extractor("carcinonet_toy", weights=bundle_file(CARCINONET_WEIGHTS, bundles_dir))
    extract_bag_features(
        load_wsi_bags(out / "panda_tiles"), extractor, out / "panda_features", progress=False,
        loader=SlideTileLoader(tile_size),
    )  # fmt: skip
    model = load_transmil(bundle_file(TRANSMIL_WEIGHTS, bundles_dir), extractor.num_features)
    tiles = {r["slide_id"]: r["n_tiles"] for r in tiled.rows}
    slides, logits, _ = panda_slide_logits(model, out / "panda_features", panda)
    readings = []
    for slide, probs in zip(slides, torch.sigmoid(logits).tolist()):
        truth = [LABEL_NAMES[k] for k, v in enumerate(slide["label"]) if v > 0.5]
        read = [LABEL_NAMES[k] for k, p in enumerate(probs) if p > 0.5] or ["none"]
        readings.append({"slide_id": slide["slide_id"], "provider": slide["provider"], "truth": truth,
                         "probabilities": dict(zip(LABEL_NAMES, probs))})  # fmt: skip
        print(f"slide {slide['slide_id'][:8]} ({slide['provider']}, {tiles.get(slide['slide_id'], 0)} tiles): truth "
              f"{'+'.join(truth)}; TransMIL reads {'+'.join(read)} "
              f"({', '.join(f'{n} {p:.2f}' for n, p in zip(LABEL_NAMES, probs))})")  # fmt: skip
    shown = max(readings, key=lambda r: len(r["truth"]))
    thumbnail = Image.open(out / "panda_tiles" / "thumbnails" / f"{shown['slide_id']}.png").convert("RGB")
    save_grid(
        [[np.asarray(thumbnail)]], out / "panda_slide.png",
        title=f"toy PANDA slide {shown['slide_id'][:8]} ({shown['provider']}, {'+'.join(shown['truth'])}): tissue "
        f"and the {tiles.get(shown['slide_id'], 0)} tiles TransMIL reads", text_px=16,
    )  # fmt: skip
    print(f"{len(readings)} slides in {time.perf_counter() - start:.0f} s (too few for an AUROC: "
          f"`monai-disc evaluate-slides` scores a real PANDA set); picture: {out / 'panda_slide.png'}")  # fmt: skip
    return readings


def _closing(out: Path, figures: dict) -> None:
    """The demo's last lines: what was shown, and where to look next."""
    gen, scarce = figures["generator"], figures["scarce_slides"]
    macro = scarce["macro_auroc"]
    print(f"\ndone in {figures['seconds'] / 60:.1f} min. What was shown:")
    print(f"- {gen} paints tiles that follow a Gleason mask: the ruler reads them at mIoU "
          f"{figures['generated_64px']['miou']:.3f}, the real tiles of the same masks at {figures['real_64px']['miou']:.3f} "
          "(generated_grid.png)")  # fmt: skip
    print("- planned synthetic slides across the grades (synthetic_slides/slide_grid.png)")
    print(f"- with {SCARCE_SLIDES} real slides, synthetic slides move the slide grader's macro AUROC from "
          f"{np.mean(macro['real']):.1f} to {np.mean(macro['mixed']):.1f}, seed by seed in scarce_slides.png")  # fmt: skip
    if "whole_slides" in figures:
        print("- whole slides in, tiles at a target mpp, a slide-level reading (panda_slide.png)")
    print(
        "Next: docs/quickstart.md (your own data), docs/generators.md (every generator, `monai-disc compare-"
        "generators`), docs/bundles.md (`python -m monai.bundle run`), docs/monailabel.md (QuPath)."
    )
    print(f"figures: {out / 'demo_figures.json'}; pictures: {', '.join(figures['pictures'])}")
