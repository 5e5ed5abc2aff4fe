"""Whole slides: tissue detection + tiling of a large pyramidal slide, and tile features read straight from slides
against the same tiles read as JPEG files.

The bench writes one synthetic pyramidal TIFF (default 40,000 x 30,000 px at 0.5 um/px, levels 1, 4, 16, 64x;
mostly constant glass tiles, so writing it is cheap) with a few tissue bands, then measures in one process:

* tiling: :func:`monai_disc.data.wsi.plan_slide_tiles` (thumbnail read, tissue detection, tile grid), seconds per
  slide, and how many pixels it read against level 0;
* features: ``extract_bag_features`` over the first ``--tiles`` tiles, read from the slide at their coordinates
  (:class:`SlideTileLoader`) or from JPEG files of the same tiles written beforehand (``tile_loader``), with the
  same DataLoader workers, interleaved; tiles/s of each (reading only, and reading + the toy CarcinoNet encoder),
  and their ratio (slide / JPEG); the time to write the JPEG files is reported apart, and with it the end-to-end
  ratio.

    python bench/bench_wsi.py [--width 40000 --height 30000] [--tiles 256] [--tile-size 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from monai_disc.data.tilesets import tile_loader
from monai_disc.data.wsi import SlideTileLoader, open_slide, plan_slide_tiles, read_tile
from monai_disc.networks import build_extractor, extract_bag_features

__all__ = ["main", "write_bench_slide"]

GLASS = np.array([242, 242, 242], np.uint8)
PINK = np.array([210, 120, 180], np.int16)


def _tissue_map(width: int, height: int, scale: int) -> np.ndarray:
    """Tissue at 1/``scale`` resolution: three wavy biopsy bands."""
    h, w = -(-height // scale), -(-width // scale)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tissue = np.zeros((h, w), bool)
    for k in range(3):
        centre = h * (k + 0.5) / 3 + 0.04 * h * np.sin(2 * np.pi * xx / (0.7 * w) + k)
        tissue |= (np.abs(yy - centre) < 0.07 * h) & (xx > 0.08 * w) & (xx < 0.92 * w)
    return tissue


def write_bench_slide(path: Path, width: int, height: int, mpp: float = 0.5, tile: int = 512) -> Path:
    """A tiled pyramidal RGB TIFF (zlib, levels 1, 4, 16, 64x) written tile by tile from an iterator."""
    import tifffile

    coarse = 64
    tissue = _tissue_map(width, height, coarse)
    # a periodic texture (32 px): tissue looks busy but zlib finds the repeats, so the file stays small
    texture = np.tile(np.random.default_rng(0).integers(-30, 31, (32, 32, 3)), (tile // 32, tile // 32, 1))
    texture = texture.astype(np.int16)
    glass_tile = np.broadcast_to(GLASS, (tile, tile, 3))

    def tiles(ds: int, lw: int, lh: int):
        for ty in range(0, lh, tile):
            for tx in range(0, lw, tile):
                # the coarse tissue map under this tile, at this level's resolution
                y0, x0 = ty * ds // coarse, tx * ds // coarse
                y1, x1 = -(-(ty + tile) * ds // coarse), -(-(tx + tile) * ds // coarse)
                part = tissue[y0:y1, x0:x1]
                if not part.any():
                    yield glass_tile
                    continue
                rep = max(1, coarse // ds)
                up = np.repeat(np.repeat(part, rep, 0), rep, 1)
                up = np.pad(up, ((0, max(0, tile - up.shape[0])), (0, max(0, tile - up.shape[1]))))[:tile, :tile]
                if ds > coarse:
                    up = np.asarray(Image.fromarray(part).resize((tile, tile), Image.Resampling.NEAREST))
                pink = np.clip(PINK + texture, 0, 255).astype(np.uint8)
                yield np.where(up[..., None], pink, GLASS)

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, ds in enumerate((1, 4, 16, 64)):
            lw, lh = width // ds, height // ds
            px_per_cm = 1e4 / (mpp * ds)
            tw.write(
                tiles(ds, lw, lh), shape=(lh, lw, 3), dtype=np.uint8, photometric="rgb", tile=(tile, tile),
                compression="zlib", compressionargs={"level": 1}, subfiletype=int(i > 0), resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
            )  # fmt: skip
    return path


def _read_only(items: list, loader, workers: int, batch: int) -> float:
    """Seconds to read every tile through a DataLoader (no network)."""

    class _Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(items)

        def __getitem__(self, i: int) -> torch.Tensor:
            return loader(items[i])

    t0 = time.perf_counter()
    for _ in DataLoader(_Items(), batch_size=batch, num_workers=workers):
        pass
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=40000)
    parser.add_argument("--height", type=int, default=30000)
    parser.add_argument("--mpp", type=float, default=1.0, help="target resolution of the tiles (um/px)")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--tiles", type=int, default=256, help="tiles embedded in the feature comparison")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp folder, removed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_wsi_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        slide = write_bench_slide(work / "slide.tiff", args.width, args.height)
        print(f"wrote {args.width} x {args.height} px slide ({slide.stat().st_size / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip

        seconds = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            plan = plan_slide_tiles(slide, tile_size=args.tile_size, mpp=args.mpp, min_tissue=0.5)
            seconds.append(time.perf_counter() - t0)
        read_px = plan.thumbnail.shape[0] * plan.thumbnail.shape[1]
        print(f"tiling: {statistics.median(seconds):.2f} s per slide (median of {args.repeats}); "
              f"{len(plan.tiles)} tiles of {plan.size} px at level {plan.level}; thumbnail level "
              f"{plan.thumbnail_level} {plan.thumbnail.shape[1]} x {plan.thumbnail.shape[0]} px = "
              f"{read_px / (args.width * args.height):.5f} of level 0 read")  # fmt: skip

        rng = np.random.default_rng(0)
        picked = sorted(rng.choice(len(plan.tiles), min(args.tiles, len(plan.tiles)), replace=False))
        coords = [{"image": str(slide), **{k: plan.tiles[i][k] for k in ("x", "y", "level", "size")}} for i in picked]
        reader, wsi = open_slide(slide)
        files = []
        t0 = time.perf_counter()
        for j, tile in enumerate(coords):
            files.append(str(work / "jpeg" / f"{j:05d}.jpg"))
            Path(files[-1]).parent.mkdir(exist_ok=True)
            Image.fromarray(read_tile(reader, wsi, tile, args.tile_size)).save(files[-1], quality=90)
        wsi.close()
        dump = time.perf_counter() - t0

        extractor = build_extractor("carcinonet_toy")
        sources = {
            "slide": (coords, SlideTileLoader(args.tile_size)),
            "jpeg": (files, tile_loader()),
        }
        read: dict[str, list[float]] = {k: [] for k in sources}
        full: dict[str, list[float]] = {k: [] for k in sources}
        for r in range(args.repeats):
            for name, (items, loader) in sources.items():
                read[name].append(_read_only(items, loader, args.workers, args.batch_size))
                out = work / f"features_{name}_{r}"
                bag = [{"slide_id": "bench", "tiles": items, "label": np.zeros(4, np.float32)}]
                t0 = time.perf_counter()
                extract_bag_features(bag, extractor, out, batch_size=args.batch_size, progress=False, loader=loader,
                                     num_workers=args.workers)  # fmt: skip
                full[name].append(time.perf_counter() - t0)
                shutil.rmtree(out)
        n = len(coords)
        rate = {k: {"read": n / statistics.median(read[k]), "embed": n / statistics.median(full[k])} for k in sources}
        print(f"features of {n} tiles ({args.tile_size} px, from {plan.size} px at level {plan.level}), "
              f"{args.workers} workers, medians of {args.repeats}:")  # fmt: skip
        print("| source | read tiles/s | read + embed tiles/s |\n|---|---|---|")
        for k in sources:
            print(f"| {k} | {rate[k]['read']:.0f} | {rate[k]['embed']:.0f} |")
        print(f"| slide / jpeg | {rate['slide']['read'] / rate['jpeg']['read']:.2f} | "
              f"{rate['slide']['embed'] / rate['jpeg']['embed']:.2f} |")  # fmt: skip
        jpeg_total = dump + statistics.median(full["jpeg"])
        print(
            f"writing the JPEG tiles first (one process, not in the rates above): {n / dump:.0f} tiles/s; "
            f"end-to-end speed, slide / JPEG with its dump: {jpeg_total / statistics.median(full['slide']):.2f}"
        )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
