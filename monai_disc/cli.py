"""`monai-disc`: the command-line door to the Python API (parses arguments, calls library functions)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

REPO_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def _toy_data(args: argparse.Namespace) -> None:
    from monai_disc.data.sicapv2 import format_summary, summarize_sicapv2
    from monai_disc.data.toy import make_toy_sicapv2, save_contact_sheet

    start = time.perf_counter()
    root = make_toy_sicapv2(args.out, n_slides=args.slides, tile_size=args.tile_size, seed=args.seed)
    print(f"toy SICAPv2 set at {root} ({time.perf_counter() - start:.1f} s)")
    if args.preview:
        sheet = save_contact_sheet(root, Path(root) / "preview.png")
        print(f"contact sheet: {sheet}")
    print(format_summary(summarize_sicapv2(root)))


def _summary(args: argparse.Namespace) -> None:
    from monai_disc.data.sicapv2 import format_summary, summarize_sicapv2

    print(format_summary(summarize_sicapv2(args.root)))


def _generate_slides(args: argparse.Namespace) -> None:
    from monai_disc.data import load_sicapv2
    from monai_disc.generate_slides import generate_slides
    from monai_disc.generators import load_generator
    from monai_disc.sampling import ShapeBank, load_plans, plan_synthetic_slides, save_plans

    out = Path(args.out)
    bank_path, plans_path = out / "shape_bank.npz", out / "plans.json"
    # one bank and one plan for every generator: the paper's fair comparison
    if bank_path.is_file():
        bank = ShapeBank.load(bank_path)
    else:
        bank = ShapeBank.from_data_list(load_sicapv2(args.data, "Test", "Train"), size=args.tile_size)
        bank.save(bank_path)
    if plans_path.is_file():
        plans = load_plans(plans_path)
    else:
        plans = plan_synthetic_slides(args.data, bank, target=args.target, seed=args.seed, n_tiles=args.tiles)
        save_plans(plans, plans_path, bank)
    print(f"{len(plans)} synthetic slides planned to bring every primary grade to {args.target} slides")
    generator = load_generator(args.generator, args.bundles, steps=args.steps)
    if args.as_wsi:
        from monai_disc.generate_region import generate_wsi_slides

        table = generate_wsi_slides(plans, out / f"{args.generator}_wsi", generator, bank, args.wsi_size, mpp=args.mpp)
        print(f"slides: {table}" if table else "this rank is done; the last rank to finish writes train.csv")
        return
    manifest = generate_slides(plans, out / args.generator, generator, bank, batch_size=args.batch_size)
    print(f"manifest: {manifest}" if manifest else "this rank is done; the last rank to finish writes the manifest")


def _generate_region(args: argparse.Namespace) -> None:
    from monai_disc.generate_region import generate_region, mask_path_for
    from monai_disc.generators import load_generator
    from monai_disc.inferers import RegionSampler
    from monai_disc.masks import load_slide_mask

    mask = load_slide_mask(args.mask, level=args.mask_level)
    generator = load_generator(
        args.generator, args.bundles, steps=args.num_inference_steps, guidance_scale=args.guidance_scale
    )
    region = RegionSampler(generator.sampler, mode=args.mode, progress=True)
    out = generate_region(mask, args.out, generator, seed=args.seed, mpp=args.mpp, region=region, source=args.mask)
    print(f"slide: {out}\nmask: {mask_path_for(out)}")


def _compare_generators(args: argparse.Namespace) -> None:
    from monai_disc.compare import format_comparison, run_comparison

    result = run_comparison(
        args.data, args.out, bundles=args.bundles, num_masks=args.masks, steps=args.steps, seed=args.seed,
        size=args.tile_size, resume=args.resume, guidance_scale=args.guidance,
    )  # fmt: skip
    print(format_comparison(result))


def _extract_features(args: argparse.Namespace) -> None:
    from monai_disc.data.tilesets import load_sicapv2_bags, load_synthetic_bags
    from monai_disc.networks import build_extractor, extract_bag_features

    if args.synthetic:
        bags = load_synthetic_bags(args.synthetic)
    else:
        bags = load_sicapv2_bags(args.data, args.partition, args.split)
    extractor = build_extractor(args.extractor, weights=args.weights)
    written = extract_bag_features(bags, extractor, args.out, batch_size=args.batch_size)
    print(f"features of {len(written)} slides in {args.out}")


def _named_dirs(pairs: Sequence[str], option: str) -> dict[str, str]:
    named = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"{option} takes NAME=DIR, got {pair!r}")
        named[name] = folder
    return named


def _lambda_sweep(args: argparse.Namespace) -> None:
    from monai_disc.sweep import format_sweep, lambda_sweep

    summary = lambda_sweep(
        args.train, args.val, _named_dirs(args.test, "--test"), _named_dirs(args.synthetic, "--synthetic"),
        lambdas=args.lambdas, seeds=args.seeds, out_dir=args.out, max_epochs=args.max_epochs,
        patience=args.patience, network=args.network,
    )  # fmt: skip
    print(format_sweep(summary))


def _demo(args: argparse.Namespace) -> None:
    from monai_disc.demo import run_demo

    run_demo(Path(args.out), bundles=Path(args.bundles), seed=args.seed, steps=args.steps, n_slides=args.slides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monai-disc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("toy-data", help="write the procedural toy set in the SICAPv2 layout")
    p.add_argument("--out", required=True, help="output folder (the SICAPv2 root)")
    p.add_argument("--slides", type=int, default=40, help="number of slides")
    p.add_argument("--tile-size", type=int, default=128, help="tile size in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview", action="store_true", help="also write preview.png, tiles beside their masks")
    p.set_defaults(func=_toy_data)

    p = sub.add_parser("summary", help="print tiles per grade and slides per primary grade of a SICAPv2 root")
    p.add_argument("root")
    p.set_defaults(func=_summary)

    p = sub.add_parser("generate-slides", help="plan synthetic slides that balance the primary grades and draw them")
    p.add_argument("--data", required=True, help="SICAPv2 root whose training masks and slides are balanced")
    p.add_argument("--out", required=True, help="output folder: bank, plans, and one slide folder per generator")
    p.add_argument("--generator", default="sd", choices=["sd", "sc", "disc", "cotrain"])
    p.add_argument("--bundles", default=str(REPO_BUNDLES), help="folder holding the bundles and their weights")
    p.add_argument("--target", type=int, default=100, help="slides per primary grade, real plus synthetic")
    p.add_argument("--tiles", type=int, nargs=2, default=(20, 100), metavar=("MIN", "MAX"), help="tiles per slide")
    p.add_argument("--tile-size", type=int, default=64, help="tile size the generator draws")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps per tile")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--as-wsi", action="store_true", help="write each slide as a pyramidal TIFF + mask (PANDA layout)")
    p.add_argument("--wsi-size", type=int, nargs=2, default=(512, 2048), metavar=("H", "W"), help="slide size, px")
    p.add_argument("--mpp", type=float, default=2.0, help="microns per pixel written into the slide TIFFs")
    p.set_defaults(func=_generate_slides)

    p = sub.add_parser("generate-region", help="a seamless region for a slide mask, as a pyramidal TIFF + mask TIFF")
    p.add_argument("--mask", required=True, help="PNG label map (0..3, 255 glass) or PANDA radboud mask TIFF")
    p.add_argument("--mask-level", type=int, default=0, help="pyramid level to read a mask TIFF at")
    p.add_argument("--out", required=True, help="the slide .tiff; the mask goes to OUT_mask.tiff")
    p.add_argument("--generator", default="sd", choices=["sd", "sc", "disc", "cotrain"])
    p.add_argument("--bundles", default=str(REPO_BUNDLES), help="folder holding the bundles and their weights")
    p.add_argument("--num-inference-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance weight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mpp", type=float, default=2.0, help="microns per pixel of the mask's pixels")
    p.add_argument("--mode", default="average", choices=["average", "shift"], help="how windows agree per step")
    p.set_defaults(func=_generate_region)

    p = sub.add_parser("compare-generators", help="SD, SD-SC, SD-DISC, SD-DISC-CoTrain on the same masks and seeds")
    p.add_argument("--data", required=True, help="SICAPv2 root whose held-out masks condition the generators")
    p.add_argument("--out", required=True, help="output folder: compare.md, compare.json, compare_grid.png")
    p.add_argument("--bundles", default=str(REPO_BUNDLES), help="folder holding the bundles and their weights")
    p.add_argument("--masks", type=int, default=16, help="held-out masks with two or more labels")
    p.add_argument("--tile-size", type=int, default=64, help="tile size the generators draw")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps per tile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight (1: plain sampling)")
    p.add_argument("--resume", action="store_true", help="reuse stored results of unchanged generators")
    p.set_defaults(func=_compare_generators)

    p = sub.add_parser("extract-features", help="cache per-slide tile features of real or synthetic slides")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="SICAPv2 root (real slides)")
    source.add_argument("--synthetic", help="a generate-slides output folder (with manifest.csv)")
    p.add_argument("--partition", default="Test")
    p.add_argument("--split", default="Train")
    p.add_argument("--out", required=True, help="feature cache folder (one .pt per slide)")
    p.add_argument("--extractor", default="carcinonet_toy", help="vit_small_dino, resnet50_mocov2, ... or a timm name")
    p.add_argument("--weights", default=None, help="local weight file of the extractor")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_extract_features)

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

    p = sub.add_parser("demo", help="the main job on the embedded toy data")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--bundles", default=str(REPO_BUNDLES), help="folder holding the bundles and their weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps per tile")
    p.add_argument("--slides", type=int, default=40, help="slides of the toy set")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        # MONAI re-raises transform errors as "applying transform ..."; the innermost cause names the file
        while e.__cause__ is not None:
            e = e.__cause__
        print(f"monai-disc {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
