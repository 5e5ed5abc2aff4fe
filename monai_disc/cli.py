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
