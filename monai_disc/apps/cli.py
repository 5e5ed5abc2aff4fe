"""`monai-disc`: the command-line door to the Python API (parses arguments, calls library functions)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from monai_disc.bundles import REPO_BUNDLES, TRANSMIL_WEIGHTS, bundle_file

__all__ = ["main", "build_parser"]


def _toy_data(args: argparse.Namespace) -> None:
    from monai_disc.data.sicapv2 import format_summary, summarize_sicapv2
    from monai_disc.data.toy import TOY_CONFIGS, make_toy_sicapv2, save_contact_sheet

    start = time.perf_counter()
    kwargs = TOY_CONFIGS[args.config].build_kwargs()
    kwargs.update({k: v for k, v in (("n_slides", args.slides), ("tile_size", args.tile_size)) if v is not None})
    root = make_toy_sicapv2(args.out, seed=args.seed, overwrite=args.overwrite, **kwargs)
    print(f"toy SICAPv2 set at {root} ({time.perf_counter() - start:.1f} s)")
    if args.preview:
        sheet = save_contact_sheet(root, Path(root) / "preview.png")
        print(f"contact sheet: {sheet}")
    print(format_summary(summarize_sicapv2(root)))


def _summary(args: argparse.Namespace) -> None:
    from monai_disc.data.sicapv2 import format_summary, summarize_sicapv2

    summary = summarize_sicapv2(args.root)
    if not summary["sheets"] and summary["slides"] is None:
        raise FileNotFoundError(
            f"{args.root} holds no SICAPv2 data: no partition sheets (partition/Test/Train.xlsx, ...) and no "
            "wsi_labels.xlsx"
        )
    print(format_summary(summary))


def _generate_slides(args: argparse.Namespace) -> None:
    from monai_disc.apps.generate_slides import run_generate_slides

    plans, manifest = run_generate_slides(
        args.data, args.out, args.generator, args.bundles, target=args.target, tiles=args.tiles,
        tile_size=args.tile_size, num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
        solver=args.solver, seed=args.seed, batch_size=args.batch_size, overwrite=args.overwrite,
        wsi_size=args.wsi_size if args.as_wsi else None, mpp=args.mpp,
    )  # fmt: skip
    print(f"{len(plans)} synthetic slides planned to bring every primary grade to {args.target} slides")
    print(f"manifest: {manifest}" if manifest else "this rank is done; the last rank to finish writes the manifest")


def _generate_region(args: argparse.Namespace) -> None:
    from monai_disc.apps.generate_region import generate_region, mask_path_for
    from monai_disc.inferers import RegionSampler, load_generator
    from monai_disc.masks import load_slide_mask

    mask = load_slide_mask(args.mask, level=args.mask_level)
    generator = load_generator(
        args.generator, args.bundles, num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
        solver=args.solver,
    )  # fmt: skip
    region = RegionSampler(generator.sampler, mode=args.mode, progress=True)
    out = generate_region(mask, args.out, generator, seed=args.seed, mpp=args.mpp, region=region, source=args.mask)
    print(f"slide: {out}\nmask: {mask_path_for(out)}")


def _compare_generators(args: argparse.Namespace) -> None:
    from monai_disc.apps.compare import format_comparison, run_comparison

    result = run_comparison(
        args.data, args.out, bundles_dir=args.bundles, num_masks=args.masks,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale, solver=args.solver,
        seed=args.seed, size=args.tile_size, resume=args.resume,
    )  # fmt: skip
    print(format_comparison(result))


def _distill_set(args: argparse.Namespace) -> None:
    from monai_disc.apps.generate_slides import shape_bank
    from monai_disc.engines import write_distillation_set
    from monai_disc.inferers import latent_shape_for, load_generator

    out = Path(args.out)
    if args.data:
        shape_bank(args.data, out / "shape_bank.npz", args.bank_size)
    generator = load_generator(
        args.generator, args.bundles, num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
        solver=args.solver,
    )  # fmt: skip
    size = (args.tile_size, args.tile_size)
    write_distillation_set(
        out / "distill", generator.denoiser, args.sets,
        latent_shape_for(generator.autoencoder, size, generator.denoiser.in_channels), generator.autoencoder,
        image_size=size, shard_size=args.shard_size, seed=args.seed, sampler=generator.ldm_sampler,
        batch_size=args.batch_size,
    )  # fmt: skip


def _extract_features(args: argparse.Namespace) -> None:
    from monai_disc.data.tilesets import load_sicapv2_bags, load_synthetic_bags
    from monai_disc.networks import build_extractor, extract_bag_features

    loader = None
    if args.wsi:
        from monai_disc.data.wsi import SlideTileLoader, failed_slides, load_wsi_bags, read_tiling_settings

        bags = load_wsi_bags(args.wsi)
        for slide_id, message in failed_slides(args.wsi):  # e.g. resolution tags not trusted: retile with --base-mpp
            print(f"monai-disc extract-features: left out {slide_id}: {message}", file=sys.stderr)
        loader = SlideTileLoader(read_tiling_settings(args.wsi)["tile_size"])
    elif args.synthetic:
        bags = load_synthetic_bags(args.synthetic)
    else:
        bags = load_sicapv2_bags(args.data, args.partition, args.split)
    extractor = build_extractor(args.extractor, weights=args.weights)
    written = extract_bag_features(
        bags, extractor, args.out, batch_size=args.batch_size, loader=loader, num_workers=args.num_workers,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(f"features of {len(written)} slides in {args.out}")


def _tile_slides(args: argparse.Namespace) -> int:
    from monai_disc.apps.tile_slides import list_slides, panda_slides, read_slide_labels, tile_slides

    if args.panda:
        slides = panda_slides(args.panda)
    else:
        slides = list_slides(args.slides, read_slide_labels(args.labels) if args.labels else None)
    result = tile_slides(
        slides, args.out, tile_size=args.tile_size, mpp=args.mpp, min_tissue=args.min_tissue,
        base_mpp=args.base_mpp, tissue=args.tissue, overwrite=args.overwrite,
    )  # fmt: skip
    counts = {s: sum(r["status"] == s for r in result.rows) for s in ("ok", "empty", "error")}
    print(f"{len(result.rows)} slides: {counts['ok']} ok, {counts['empty']} empty, {counts['error']} failed")
    for row in result.failed:
        print(f"monai-disc tile-slides: error: {row['message']}", file=sys.stderr)
    print(f"manifest: {result.manifest}" if result.manifest else "this rank is done; the last rank writes the manifest")
    return 1 if result.failed else 0


def _evaluate_slides(args: argparse.Namespace) -> None:
    from monai_disc.engines.panda import load_transmil, write_panda_metrics
    from monai_disc.networks.features import FeatureBagDataset

    width = FeatureBagDataset(args.features).num_features
    model = load_transmil(args.model, width, args.network)
    out = Path(args.out) if args.out else Path(args.features) / "metrics_panda.json"
    write_panda_metrics(model, args.features, args.panda, out, extra={"model": str(args.model)})
    print(f"metrics: {out}")


def _named_dirs(pairs: Sequence[str], option: str) -> dict[str, str]:
    named = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"{option} takes NAME=DIR, got {pair!r}")
        named[name] = folder
    return named


def _lambda_sweep(args: argparse.Namespace) -> None:
    from monai_disc.apps.sweep import format_sweep, lambda_sweep

    summary = lambda_sweep(
        args.train, args.val, _named_dirs(args.test, "--test"), _named_dirs(args.synthetic, "--synthetic"),
        lambdas=args.lambdas, seeds=args.seeds, out_dir=args.out, max_epochs=args.max_epochs,
        patience=args.patience, network=args.network,
    )  # fmt: skip
    print(format_sweep(summary))


def _study(args: argparse.Namespace) -> None:
    from monai_disc.apps.study import PixelData, format_study, prepare_study, run_study

    prepared = prepare_study(
        args.out, data=args.data, toy_config=args.toy_config, toy_seed=args.toy_seed,
        synthetic=_named_dirs(args.synthetic, "--synthetic"), generators=args.generators,
        n_synthetic=args.synthetic_slides, synthetic_tiles=tuple(args.synthetic_tiles), bundles_dir=args.bundles,
        num_inference_steps=args.num_inference_steps, solver=args.solver, guidance_scale=args.guidance_scale,
        extractor=args.extractor,
        weights=args.weights, pixel=args.pixel_seeds != 0, pixel_test_tiles=args.pixel_test_tiles,
        overwrite=args.overwrite,
    )  # fmt: skip
    pixel = None
    if prepared["pixel"] is not None:
        seeds = None if args.pixel_seeds is None else list(range(args.pixel_seeds))
        pixel = PixelData(**prepared["pixel"], lam=args.pixel_lambda, steps=args.pixel_steps, seeds=seeds,
                          settings={"test_tiles": args.pixel_test_tiles})  # fmt: skip
    report = run_study(
        prepared["pool"], prepared["test"], prepared["synthetic"], args.out, seeds=list(range(args.seeds)),
        n_train=args.train_slides, n_val=args.val_slides, lambdas=args.lambdas, pixel=pixel, n_boot=args.bootstrap,
        settings=prepared["settings"], overwrite=args.overwrite, network=args.network, max_epochs=args.max_epochs,
        patience=args.patience, tensorboard=False,
    )  # fmt: skip
    if report is None:
        print("study: this rank's cells are finished; the report is written by the rank that finishes the last one")
    else:
        print(format_study(report))
        print(f"report: {Path(args.out) / 'study.md'}, {Path(args.out) / 'study.json'}, {Path(args.out) / 'study.png'}")


def _demo(args: argparse.Namespace) -> None:
    from monai_disc.apps.demo import run_demo

    run_demo(
        Path(args.out), bundles_dir=args.bundles, generator=args.generator, seed=args.seed,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale, n_slides=args.slides,
        overwrite=args.overwrite,
    )  # fmt: skip


def _add_sampling(p: argparse.ArgumentParser, generator: bool = True, solver: bool = True) -> None:
    """The options of every command that draws tiles: generator, bundles folder, solver and its steps, guidance."""
    from monai_disc.inferers import DEFAULT_GENERATOR, DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_SOLVER, GENERATORS, SOLVERS

    if generator:
        p.add_argument(
            "--generator", default=DEFAULT_GENERATOR, choices=list(GENERATORS), help="a registered generator"
        )
    p.add_argument("--bundles", default=str(REPO_BUNDLES), help="folder holding the bundles and their weights")
    p.add_argument(
        "--num-inference-steps", type=int, default=None,
        help=f"solver steps per tile (default: the generator's registry entry, else {DEFAULT_NUM_INFERENCE_STEPS})",
    )  # fmt: skip
    if solver:
        p.add_argument(
            "--solver", default=None, choices=sorted(SOLVERS),
            help=f"sampling solver (default: the generator's registry entry, else {DEFAULT_SOLVER})",
        )  # fmt: skip
    p.add_argument(
        "--guidance-scale", type=float, default=1.0, help="classifier-free guidance weight (1: plain sampling)"
    )


def _label_server(args: argparse.Namespace) -> None:
    import os
    import subprocess

    from monai_disc.monailabel import server_command

    cmd = server_command(
        args.studies, host=args.host, port=args.port, models=args.models, bundles=args.bundles,
        conf=dict(args.conf or []),
    )  # fmt: skip
    env = {**os.environ, "BUNDLE_DOWNLOAD_SRC": "local"}  # no model-zoo lookups over the network
    if os.name == "posix":  # become the server: Ctrl+C and kill reach it directly
        os.execve(cmd[0], cmd, env)
    code = subprocess.call(cmd, env=env)
    if code:
        raise RuntimeError(f"the MONAI Label server exited with code {code}")


def build_parser() -> argparse.ArgumentParser:
    from monai_disc import __version__

    parser = argparse.ArgumentParser(prog="monai-disc", description=__doc__)
    parser.add_argument("--version", action="version", version=f"monai-disc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("toy-data", help="write the procedural toy set in the SICAPv2 layout")
    p.add_argument("--out", required=True, help="output folder (the SICAPv2 root)")
    p.add_argument(
        "--config", default="default", choices=["default", "hard"],
        help="named setting of the generator (hard: the downstream benchmark, docs/downstream.md)",
    )  # fmt: skip
    p.add_argument("--slides", type=int, default=None, help="number of slides (default: the config's, 40)")
    p.add_argument("--tile-size", type=int, default=None, help="tile size in pixels (default: the config's, 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview", action="store_true", help="also write preview.png, tiles beside their masks")
    p.add_argument("--overwrite", action="store_true", help="replace a toy set written with other settings")
    p.set_defaults(func=_toy_data)

    p = sub.add_parser("summary", help="print tiles per grade and slides per primary grade of a SICAPv2 root")
    p.add_argument("root")
    p.set_defaults(func=_summary)

    p = sub.add_parser("generate-slides", help="plan synthetic slides that balance the primary grades and draw them")
    p.add_argument("--data", required=True, help="SICAPv2 root whose training masks and slides are balanced")
    p.add_argument("--out", required=True, help="output folder: bank, plans, and one slide folder per generator")
    _add_sampling(p)
    p.add_argument("--target", type=int, default=100, help="slides per primary grade, real plus synthetic")
    p.add_argument("--tiles", type=int, nargs=2, default=(20, 100), metavar=("MIN", "MAX"), help="tiles per slide")
    p.add_argument("--tile-size", type=int, default=64, help="tile size the generator draws")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="start over in a folder written with other settings")
    p.add_argument("--as-wsi", action="store_true", help="write each slide as a pyramidal TIFF + mask (PANDA layout)")
    p.add_argument("--wsi-size", type=int, nargs=2, default=(512, 2048), metavar=("H", "W"), help="slide size, px")
    p.add_argument("--mpp", type=float, default=2.0, help="microns per pixel written into the slide TIFFs")
    p.set_defaults(func=_generate_slides)

    p = sub.add_parser(
        "generate-region", help="one continuous region for a slide mask, as a pyramidal TIFF + mask TIFF"
    )
    p.add_argument("--mask", required=True, help="PNG label map (0..3, 255 glass) or PANDA radboud mask TIFF")
    p.add_argument("--mask-level", type=int, default=0, help="pyramid level to read a mask TIFF at")
    p.add_argument("--out", required=True, help="the slide .tiff; the mask goes to OUT_mask.tiff")
    _add_sampling(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mpp", type=float, default=2.0, help="microns per pixel of the mask's pixels")
    p.add_argument("--mode", default="average", choices=["average", "shift"], help="how windows agree per step")
    p.set_defaults(func=_generate_region)

    p = sub.add_parser(
        "compare-generators", help="every registered generator, each at its own solver, on the same masks and seeds"
    )
    p.add_argument("--data", required=True, help="SICAPv2 root whose held-out masks condition the generators")
    p.add_argument("--out", required=True, help="output folder: compare.md, compare.json, compare_grid.png")
    _add_sampling(p, generator=False)
    p.add_argument("--masks", type=int, default=16, help="held-out masks with two or more labels")
    p.add_argument("--tile-size", type=int, default=64, help="tile size the generators draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="reuse stored results of unchanged generators")
    p.set_defaults(func=_compare_generators)

    p = sub.add_parser("distill-set", help="DISC's distillation set: separated latents under the uniform masks")
    p.add_argument("--out", required=True, help="output folder: distill/ (shards, manifest) and shape_bank.npz")
    p.add_argument("--data", help="SICAPv2 root whose Train masks make the shape bank DISC draws its masks from")
    _add_sampling(p)
    p.add_argument("--sets", type=int, default=2000, help="number of sets (the paper: 20,000)")
    p.add_argument("--tile-size", type=int, default=64, help="tile size of the uniform masks (the SD model's)")
    p.add_argument("--bank-size", type=int, default=128, help="side of the stored m_freq shapes")
    p.add_argument("--shard-size", type=int, default=256, help="sets per shard file")
    p.add_argument("--batch-size", type=int, default=8, help="sets per denoiser batch (K rows each)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_distill_set)

    p = sub.add_parser("extract-features", help="cache per-slide tile features of real or synthetic slides")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="SICAPv2 root (real slides)")
    source.add_argument("--synthetic", help="a generate-slides output folder (with manifest.csv)")
    source.add_argument("--wsi", help="a tile-slides output folder: tiles read from the slides at their coordinates")
    p.add_argument("--partition", default="Test")
    p.add_argument("--split", default="Train")
    p.add_argument("--out", required=True, help="feature cache folder (one .pt per slide)")
    p.add_argument("--extractor", default="carcinonet_toy", help="vit_small_dino, resnet50_mocov2, ... or a timm name")
    p.add_argument("--weights", default=None, help="local weight file of the extractor")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers reading tiles")
    p.add_argument("--overwrite", action="store_true", help="start over in a cache written with other settings")
    p.set_defaults(func=_extract_features)

    p = sub.add_parser("tile-slides", help="find tissue and tile whole slides at a target resolution")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--slides", nargs="+", help="slide files or folders of them")
    source.add_argument("--panda", help="a PANDA root (train.csv, train_images/, train_label_masks/)")
    p.add_argument("--out", required=True, help="output folder: manifest.csv, coords/, thumbnails/")
    p.add_argument("--tile-size", type=int, default=512, help="tile side in pixels after resizing")
    p.add_argument("--mpp", type=float, default=1.0, help="target resolution in um/px (1.0: SICAPv2's 10x)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="smallest tissue fraction of a kept tile")
    p.add_argument(
        "--base-mpp", type=float, default=None,
        help="level-0 um/px of slides whose metadata has none or is not trusted (72/96 dpi screen tags)",
    )  # fmt: skip
    p.add_argument("--tissue", default="biopsy", choices=["biopsy", "clam"], help="tissue detection preset")
    p.add_argument("--labels", default=None, help="csv of slide_id, gleason_score (with --slides)")
    p.add_argument("--overwrite", action="store_true", help="start over in a folder tiled with other settings")
    p.set_defaults(func=_tile_slides)

    p = sub.add_parser("evaluate-slides", help="TransMIL slide AUROC on PANDA bags, overall and per provider")
    p.add_argument("--features", required=True, help="feature folder of extract-features --wsi on a PANDA tiling")
    p.add_argument("--panda", required=True, help="the PANDA root (labels from gleason_score, providers)")
    p.add_argument("--model", default=str(bundle_file(TRANSMIL_WEIGHTS)))
    p.add_argument("--network", default="transmil_toy", choices=["transmil", "transmil_toy"])
    p.add_argument("--out", default=None, help="metrics JSON (default FEATURES/metrics_panda.json)")
    p.set_defaults(func=_evaluate_slides)

    p = sub.add_parser("lambda-sweep", help="TransMIL slide AUROC against lambda per generator, over seeds")
    p.add_argument("--train", required=True, help="real training feature folder")
    p.add_argument("--val", required=True, help="real validation feature folder")
    p.add_argument("--test", required=True, action="append", metavar="NAME=DIR", help="test feature folder(s)")
    p.add_argument("--synthetic", action="append", default=[], metavar="NAME=DIR", help="synthetic feature folders")
    p.add_argument("--lambdas", type=float, nargs="+", default=[0, 0.05, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", required=True)
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--network", default="transmil", choices=["transmil", "transmil_toy"])
    p.set_defaults(func=_lambda_sweep)

    p = sub.add_parser("study", help="paired arms with and without synthetic data, seeds, confidence intervals")
    p.add_argument("--out", required=True, help="study folder (resumable; a rerun with other settings stops)")
    p.add_argument("--data", default=None, help="SICAPv2-layout root (default: draw the toy benchmark)")
    p.add_argument("--toy-config", default="hard", choices=["default", "hard"], help="toy set drawn without --data")
    p.add_argument("--toy-seed", type=int, default=0)
    p.add_argument("--synthetic", action="append", default=[], metavar="NAME=DIR", help="synthetic slide folders")
    p.add_argument(
        "--generators", nargs="+", default=None,
        help="generators that draw synthetic slides, all on the same masks and seeds: NAME ('default': the default "
        "generator at run time) or NAME:SOLVER:STEPS (arm NAME-SOLVER-STEPS, e.g. gd:ddim:50); "
        "default: sd gd default, unless --synthetic is given",
    )  # fmt: skip
    _add_sampling(p, generator=False)
    p.add_argument("--synthetic-slides", type=int, default=64, help="synthetic slides per generator")
    p.add_argument("--synthetic-tiles", type=int, nargs=2, default=[4, 8], metavar=("MIN", "MAX"))
    p.add_argument("--extractor", default="carcinonet_toy", help="tile feature extractor")
    p.add_argument("--weights", default=None, help="local weight file of the extractor")
    p.add_argument(
        "--seeds", type=int, default=10,
        help="seeds 0..N-1 (each: one real subset, one initialisation); 0: no slide level (give --pixel-seeds)",
    )  # fmt: skip
    p.add_argument("--train-slides", type=int, default=24, help="labelled real slides per seed")
    p.add_argument("--val-slides", type=int, default=24, help="real validation slides per seed (early stopping)")
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--network", default="transmil_toy", choices=["transmil", "transmil_toy"])
    p.add_argument("--max-epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--pixel-seeds", type=int, default=None, help="seeds of the CarcinoNet arms (0: none; default all)")
    p.add_argument("--pixel-steps", type=int, default=200, help="CarcinoNet training steps per cell")
    p.add_argument("--pixel-lambda", type=float, default=0.5)
    p.add_argument("--pixel-test-tiles", type=int, default=400)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the report")
    p.add_argument("--overwrite", action="store_true", help="start over in a study folder of other settings")
    p.set_defaults(func=_study)

    p = sub.add_parser("demo", help="the main job on the embedded toy data")
    p.add_argument("--out", default="demo_out", help="output folder")
    _add_sampling(p, solver=False)  # the demo samples with each generator's solver
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slides", type=int, default=40, help="slides of the toy set")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of a demo run with other settings")
    p.set_defaults(func=_demo)

    p = sub.add_parser("label-server", help="serve carcinonet and gleason_ldm to QuPath / REST clients (MONAI Label)")
    p.add_argument("--studies", required=True, help="datastore folder: slides and tiles, labels under labels/")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--models", default="carcinonet,gleason_ldm", help="comma-separated models to serve")
    p.add_argument("--bundles", default=str(REPO_BUNDLES), help="folder holding the bundles and their weights")
    p.add_argument(
        "--conf", nargs=2, action="append", metavar=("KEY", "VALUE"),
        help="an app setting, repeatable: max_region_pixels, max_region_tiles, infer_workers, region_workers, "
        "base_mpp, min_poly_area, model_dir, gleason_ldm_max_size (docs/monailabel.md)",
    )  # fmt: skip
    p.set_defaults(func=_label_server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a failure prints one line per bad file (no traceback unless ``--debug``) and returns 2.

    A command that finishes but reports failed items (``tile-slides``) returns its own exit code.
    """
    from monai_disc.errors import failure_lines

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except Exception as e:  # every failure is reported the same way; --debug shows where it came from
        if args.debug:
            import traceback

            traceback.print_exc()
        for line in failure_lines(e):
            print(f"monai-disc {args.command}: error: {line}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
