"""Regions of any size: seams, fidelity, cost and memory of the region sampler against tile-by-tile SD.

Side by side in one run, on toy slide masks drawn like annotations (:func:`monai_disc.data.toy.draw_mask`, all
tissue), with the shipped toy networks (64 px windows):

- seams: mean gradient magnitude on the lines where a naive tiling cuts (every 64 px, both directions) over the
  mean elsewhere; for naive tiling (each 64 px tile drawn alone with SD: the control), the region sampler in
  each window rule, and real toy tissue drawn for the same mask (:func:`monai_disc.data.toy.draw_tissue`), the
  target (within 5 %);
- fidelity: the CarcinoNet ruler (bundles/carcinonet) read over the region by MONAI's sliding window (64 px,
  overlap 0.5, gaussian) against the mask: mIoU, against tile-by-tile SD (goal: within 0.03);
- cost: seconds per megapixel of sampling and decoding, as a ratio to tile-by-tile SD (goal: <= 1.5);
- peak memory (``--memory``): peak resident memory of ``generate_region`` for 1024, 2048 and 4096 px regions,
  each in its own process, above that process's memory after loading the networks (goal: flat apart from the
  region's latent and its noise sum). The figure swings by tens of MB between runs of one size (what the
  allocator keeps of freed memory), so ``--repeats`` runs each size several times and reports the median.

    PYTHONPATH=$PWD python bench/bench_region.py --size 512 --masks 2 --num-inference-steps 20
    PYTHONPATH=$PWD python bench/bench_region.py --memory --sizes 1024 2048 4096 --num-inference-steps 1 --repeats 3
    PYTHONPATH=$PWD python bench/bench_region.py --picture docs/images --size 2048 --mode shift
    PYTHONPATH=$PWD python bench/bench_region.py --edges --generator gd --masks 6   # the default sampler
    PYTHONPATH=$PWD python bench/bench_region.py --decoder-context --generator gd --masks 4

``--edges`` reads the seams where they would be, at the default generator and sampler (each generator's own solver
and steps unless ``--num-inference-steps`` is given), rows (horizontal lines) and columns apart, for window rules of
the same sampling cost: the mean |gradient| across the lines where sampling windows begin or end over that across
all other lines, and the peak over the mean of the mean |gradient| by line position within the windows' stride
(which sees a seam wherever a blend puts it). References: real toy tissue on the same lines (the floor), real
tissue through the autoencoder decoded whole and in the default chunks (the decoder's part), and the default
sampler's latent decoded whole (the sampler's part alone). ``--decoder-context`` decodes real tissue in chunks cropped
to their cores with more and more context and no blending: how far apart neighbouring chunks' decodes are.

Measured on a shared 2-core CPU: docs/generators.md ("Regions of any size") has the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from monai_disc.data.toy import draw_mask, draw_tissue
from monai_disc.inferers import GENERATORS, RegionSampler, load_generator, window_starts
from monai_disc.labels import NUM_CLASSES
from monai_disc.metrics.pixel import PixelGradingMetric
from monai_disc.networks import carcinonet_toy, load_weights
from monai_disc.visualize import to_uint8

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
TILE = 64  # the toy denoiser's window in pixels (16 x 16 latents)
NAIVE = "naive tiling (tile by tile)"
RULES = {  # name -> RegionSampler options (decoded chunks on the sampling windows where there is a fixed grid)
    "no agreement (overlap 0, one noise)": {"mode": "average", "overlap": 0, "decode_overlap": 0},
    "average, overlap 8": {"mode": "average", "overlap": 8, "decode_overlap": 8},
    "average, overlap 4, ramps": {"mode": "average", "overlap": 4, "decode_overlap": 4},
    "average, overlap 2, ramps (default)": {"mode": "average", "overlap": 2, "decode_overlap": 2},
    "average, overlap 4, plain mean": {"mode": "average", "overlap": 4, "decode_overlap": 4, "blend": "uniform"},
    "average, overlap 4, decoded off-grid": {"mode": "average", "overlap": 4, "decode_overlap": 8},
    "shift (DiffInfinite)": {"mode": "shift", "overlap": 0, "decode_overlap": 4},
}


def slide_mask(size: int, seed: int) -> np.ndarray:
    """A toy annotation of a region: NC with two or three Gleason patterns in large smooth regions."""
    rng = np.random.default_rng([seed, size])
    labels = [0, *sorted(rng.choice([1, 2, 3], size=int(rng.integers(2, 4)), replace=False).tolist())]
    return draw_mask((size, size), labels, rng, smoothness=0.12, min_fraction=0.1).astype(np.uint8)


def seam_ratio(image: np.ndarray, period: int = TILE) -> float:
    """Mean |gradient| across the naive tiling's cut lines over the mean |gradient| across all other lines."""
    grey = image.astype(np.float32).mean(axis=2)
    dx = np.abs(np.diff(grey, axis=1))  # dx[:, j] is between columns j and j + 1
    dy = np.abs(np.diff(grey, axis=0))
    cut_x = np.zeros(dx.shape[1], bool)
    cut_x[period - 1 :: period] = True
    cut_y = np.zeros(dy.shape[0], bool)
    cut_y[period - 1 :: period] = True
    on = np.concatenate([dx[:, cut_x].ravel(), dy[cut_y].ravel()]).mean()
    off = np.concatenate([dx[:, ~cut_x].ravel(), dy[~cut_y].ravel()]).mean()
    return float(on / off)


EDGE_RULES = {  # rules of the same sampling cost (81 windows per 512 px and step): where their window edges show
    "average, overlap 2, ramps (default)": {"mode": "average", "overlap": 2, "decode_overlap": 2},
    "average, overlap 2, decoded whole (no chunks: the sampler's part alone)": {
        "mode": "average",
        "overlap": 2,
        "whole": True,
    },
    "average, overlap 2, decoded with overlap 4": {"mode": "average", "overlap": 2, "decode_overlap": 4},
    "average, overlap 2, decoded with overlap 8": {"mode": "average", "overlap": 2, "decode_overlap": 8},
    "shift, overlap 2, ramps (random offsets per step)": {"mode": "shift", "overlap": 2, "decode_overlap": 2},
    "shift, overlap 2, decoded with overlap 4": {"mode": "shift", "overlap": 2, "decode_overlap": 4},
}


def window_edges(length: int, region: RegionSampler, factor: int = 4) -> list[int]:
    """Pixel lines where a fixed-grid rule's windows (and decoded chunks) begin or end, inside the region."""
    starts = window_starts(length // factor, region.window, region.window - region.overlap)
    lines = {s * factor for s in starts} | {(s + region.window) * factor for s in starts}
    return sorted(e for e in lines if 0 < e < length)


def edge_ratios(image: np.ndarray, edges: list[int]) -> tuple[float, float]:
    """(rows, columns): mean |gradient| across the given lines over the mean across all other lines; a line e lies
    between pixel e - 1 and pixel e."""
    grey = image.astype(np.float32).mean(axis=2)
    out = []
    for axis in (0, 1):
        d = np.moveaxis(np.abs(np.diff(grey, axis=axis)), axis, 0)  # lines first
        on = np.zeros(d.shape[0], bool)
        on[[e - 1 for e in edges]] = True
        out.append(float(d[on].mean() / d[~on].mean()))
    return out[0], out[1]


def period_peaks(image: np.ndarray, period: int, border: int = 16) -> tuple[float, float]:
    """(rows, columns): the highest mean |gradient| of any line position modulo ``period`` (the windows' stride)
    over the mean of all positions, on whole periods at least ``border`` px inside the region (the decoder's own
    borders are not seams). Unlike :func:`edge_ratios` it sees a seam wherever in the window it lies (a blend that
    moves the seam off the window edges does not hide it); real tissue gives its noise floor."""
    grey = image.astype(np.float32).mean(axis=2)
    out = []
    for axis in (0, 1):
        d = np.moveaxis(np.abs(np.diff(grey, axis=axis)), axis, 0).mean(axis=1)  # d[e - 1]: line e
        first = -(-border // period) * period  # whole periods from the first multiple of period past the border
        lines = np.arange(first, first + (len(d) - border - first) // period * period)
        sums = np.bincount(lines % period, weights=d[lines - 1], minlength=period)
        means = sums / np.bincount(lines % period, minlength=period)
        out.append(float(means.max() / means.mean()))
    return out[0], out[1]


def _decode_whole(latent: torch.Tensor, autoencoder) -> np.ndarray:
    """A region's latent decoded in one call (no chunks: the reference without decoder seams; small regions)."""
    with torch.no_grad():
        rgb = autoencoder.decode_stage_2_outputs(latent[None] / float(getattr(autoencoder, "scale_factor", 1.0)))
    return to_uint8(rgb[0])


def edges_table(
    size: int, n_masks: int, steps: int | None, seed: int, generator: str, rules: list[str] | None = None
) -> str:
    gen = load_generator(generator, BUNDLES, num_inference_steps=steps)
    ruler = load_weights(carcinonet_toy(), BUNDLES / "carcinonet" / "models" / "model.pt")
    sampler = gen.sampler
    default = RegionSampler(sampler)
    lines = window_edges(size, default)
    period = (default.window - default.overlap) * 4
    rows: dict[str, list[tuple[float, ...]]] = {}
    seconds: dict[str, float] = {}

    def add(name: str, image: np.ndarray, mask: np.ndarray, took: float | None = None) -> None:
        row = (*edge_ratios(image, lines), *period_peaks(image, period), ruler_miou(ruler, image, mask))
        rows.setdefault(name, []).append(row)
        if took is not None:
            seconds[name] = seconds.get(name, 0.0) + took

    for m in range(n_masks):
        mask = slide_mask(size, seed + m)
        real, _ = draw_tissue(mask, np.random.default_rng([seed, m, 1]))
        add("real toy tissue (same lines)", real, mask)
        # the decoder alone: real tissue encoded, then decoded whole and in the default rule's chunks
        x = torch.from_numpy(real).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        with torch.no_grad():
            latent = gen.autoencoder.encode_stage_2_inputs(x)[0] * float(getattr(gen.autoencoder, "scale_factor", 1.0))
        add("real tissue encoded, decoded whole", _decode_whole(latent, gen.autoencoder), mask)
        add("real tissue encoded, decoded in the default 64 px chunks", default.decode(latent, gen.autoencoder), mask)
        for name, options in EDGE_RULES.items():
            if rules and name not in rules:
                continue
            whole = options.get("whole", False)  # decoded in one call, not in chunks
            region = RegionSampler(sampler, window_batch_size=32, **{k: v for k, v in options.items() if k != "whole"})
            start = time.perf_counter()
            latent = region.sample_latent(torch.from_numpy(mask), gen.autoencoder, gen.denoiser, seed + m)
            image = _decode_whole(latent, gen.autoencoder) if whole else region.decode(latent, gen.autoencoder)
            add(name, image, mask, time.perf_counter() - start)
    evaluations = default.num_evaluations
    solver = type(gen.ldm_sampler.scheduler).__name__
    out = [
        f"{n_masks} masks of {size} px, generator {gen.name}, {solver} {gen.ldm_sampler.num_inference_steps} steps "
        f"({evaluations} evaluations per window); {len(lines)} window edge lines per direction; peaks over the "
        f"{period} px window stride",
        "",
        "| drawing | rows: edges / elsewhere | columns: edges / elsewhere | rows: peak / mean | columns: peak / mean "
        "| ruler mIoU | s / region |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, values in rows.items():
        cells = np.mean(np.array(values), axis=0)
        took = f"{seconds[name] / n_masks:.1f}" if name in seconds else ""
        out.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in cells) + f" | {took} |")
    return "\n".join(out)


@torch.no_grad()
def decode_cropped(latent: torch.Tensor, autoencoder, core: int, context: int) -> np.ndarray:
    """A latent decoded in chunks of ``core`` latent pixels, each decoded with ``context`` latent pixels of its
    neighbours on every side (inside the region) and cropped to its core: no blending, so any disagreement between
    neighbouring chunks shows as a cut at the core's edge."""
    _, h, w = latent.shape
    scale = float(getattr(autoencoder, "scale_factor", 1.0))
    f = int(getattr(autoencoder, "downsample_factor", 4))
    out = torch.zeros(3, h * f, w * f)
    for y in range(0, h, core):
        for x in range(0, w, core):
            y0, x0 = max(0, y - context), max(0, x - context)
            y1, x1 = min(h, y + core + context), min(w, x + core + context)
            rgb = autoencoder.decode_stage_2_outputs(latent[None, :, y0:y1, x0:x1] / scale)[0]
            hh, ww = min(core, h - y) * f, min(core, w - x) * f
            oy, ox = (y - y0) * f, (x - x0) * f
            out[:, y * f : y * f + hh, x * f : x * f + ww] = rgb[:, oy : oy + hh, ox : ox + ww]
    return to_uint8(out)


def context_table(size: int, n_masks: int, seed: int, generator: str) -> str:
    """How far the decoder's output at a pixel depends on its chunk: real tissue encoded, decoded in cropped chunks
    with more and more context, read as period peaks over the chunk stride (real tissue: the floor)."""
    gen = load_generator(generator, BUNDLES)
    latents, reals = [], []
    for m in range(n_masks):
        real, _ = draw_tissue(slide_mask(size, seed + m), np.random.default_rng([seed, m, 1]))
        x = torch.from_numpy(real).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        with torch.no_grad():
            latents.append(gen.autoencoder.encode_stage_2_inputs(x)[0] * float(gen.autoencoder.scale_factor))
        reals.append(real)
    out = ["| chunk core (latent px) | context each side | decoded area | rows: peak / mean | columns: peak / mean |"]
    out.append("|---|---|---|---|---|")
    r = np.mean([period_peaks(real, TILE) for real in reals], axis=0)
    out.append(f"| real toy tissue (64 px period) | | | {r[0]:.3f} | {r[1]:.3f} |")
    for core, context in [(16, 0), (14, 1), (12, 2), (16, 4), (16, 8)]:
        peaks = [period_peaks(decode_cropped(z, gen.autoencoder, core, context), core * 4) for z in latents]
        r = np.mean(peaks, axis=0)
        area = ((core + 2 * context) / core) ** 2
        out.append(f"| {core} | {context} | {area:.2f}x | {r[0]:.3f} | {r[1]:.3f} |")
    return "\n".join(out)


def naive_tiling(mask: np.ndarray, gen, seed: int, batch: int = 16) -> np.ndarray:
    """Each 64 px tile drawn alone by the window sampler (SD tile by tile), pasted side by side."""
    h, w = mask.shape
    tiles = torch.from_numpy(mask.astype(np.int64)).unfold(0, TILE, TILE).unfold(1, TILE, TILE).reshape(-1, TILE, TILE)
    seeds = [seed * 100_003 + i for i in range(tiles.shape[0])]
    out = torch.cat(
        [
            gen.sampler.sample(tiles[i : i + batch], gen.autoencoder, gen.denoiser, seeds=seeds[i : i + batch])
            for i in range(0, tiles.shape[0], batch)
        ]
    )
    grid = out.reshape(h // TILE, w // TILE, 3, TILE, TILE).permute(2, 0, 3, 1, 4).reshape(3, h, w)
    return to_uint8(grid)


@torch.no_grad()
def ruler_miou(ruler: torch.nn.Module, image: np.ndarray, mask: np.ndarray) -> float:
    """mIoU of the ruler's sliding-window reading of a region against its mask."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    logits = sliding_window_inference(x, (TILE, TILE), 16, ruler, overlap=0.5, mode="gaussian")
    metric = PixelGradingMetric(num_classes=NUM_CLASSES)
    metric(logits.argmax(1), torch.from_numpy(mask.astype(np.int64))[None])
    return float(metric.aggregate()["miou"])


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def compare(
    size: int, n_masks: int, steps: int, seed: int, generator: str, guidance: float, rules: list[str]
) -> list[dict]:
    gen = load_generator(generator, BUNDLES, num_inference_steps=steps, guidance_scale=guidance)
    ruler = load_weights(carcinonet_toy(), BUNDLES / "carcinonet" / "models" / "model.pt")
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, image: np.ndarray, mask: np.ndarray, seconds: float | None) -> None:
        row = rows.setdefault(name, {"seams": [], "miou": [], "s_per_mp": []})
        row["seams"].append(seam_ratio(image))
        row["miou"].append(ruler_miou(ruler, image, mask))
        if seconds is not None:
            row["s_per_mp"].append(seconds / (mask.size / 1e6))

    for m in range(n_masks):
        mask = slide_mask(size, seed + m)
        real, _ = draw_tissue(mask, np.random.default_rng([seed, m, 1]))
        add("real toy tissue", real, mask, None)
        image, seconds = _timed(naive_tiling, mask, gen, seed + m)
        add(NAIVE, image, mask, seconds)
        for name in rules:
            region = RegionSampler(gen.sampler, window_batch_size=32, **RULES[name])
            image, seconds = _timed(region.sample, torch.from_numpy(mask), gen.autoencoder, gen.denoiser, seed + m)
            add(f"region, {name}", image, mask, seconds)
        print(f"mask {m + 1}/{n_masks} done", file=sys.stderr, flush=True)
    naive = float(np.mean(rows[NAIVE]["s_per_mp"]))
    real_seams = float(np.mean(rows["real toy tissue"]["seams"]))
    naive_miou = float(np.mean(rows[NAIVE]["miou"]))
    table = []
    for name, row in rows.items():
        s = float(np.mean(row["s_per_mp"])) if row["s_per_mp"] else float("nan")
        table.append(
            {
                "name": name,
                "seams": float(np.mean(row["seams"])),
                "seams_vs_real": float(np.mean(row["seams"])) / real_seams - 1.0,
                "miou": float(np.mean(row["miou"])),
                "miou_vs_naive": float(np.mean(row["miou"])) - naive_miou,
                "s_per_mp": s,
                "cost_vs_naive": s / naive,
            }
        )
    return table


def format_table(table: list[dict], size: int, n_masks: int, steps: int, generator: str, guidance: float) -> str:
    guided = f", guidance {guidance:g}" if guidance != 1.0 else ""
    lines = [
        f"{n_masks} toy masks of {size} px, {steps} DDIM steps{guided}, generator {GENERATORS[generator].display}",
        "",
        "| drawing | seam ratio | vs real | ruler mIoU | vs naive | s / MP | cost vs naive |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        cost = "" if np.isnan(r["s_per_mp"]) else f"{r['s_per_mp']:.0f} | {r['cost_vs_naive']:.2f}x"
        lines.append(
            f"| {r['name']} | {r['seams']:.3f} | {100 * r['seams_vs_real']:+.1f} % | {r['miou']:.3f} | "
            f"{r['miou_vs_naive']:+.3f} | {cost or ' | '} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status in MB (VmHWM: peak resident memory of this process image)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # no procfs: the (inherited) max RSS


def _reset_peak() -> None:
    """Start the peak afresh (Linux >= 4.0): ru_maxrss would keep the parent's peak across fork and exec."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _memory_child(mask_path: str, steps: int, mode: str) -> None:
    from monai_disc.apps.generate_region import generate_region

    gen = load_generator("sd", BUNDLES, num_inference_steps=steps)
    mask = np.load(mask_path)  # drawn by the parent: drawing it here would set the high-water mark
    size = mask.shape[0]
    region = RegionSampler(gen.sampler, mode=mode, window_batch_size=16)
    with torch.no_grad():  # warm up the network's buffers once, so the baseline holds them
        gen.denoiser(torch.zeros(16, 3, 16, 16), torch.zeros(16, dtype=torch.long), mask=torch.zeros(16, 64, 64).long())
        gen.autoencoder.decode_stage_2_outputs(torch.zeros(4, 3, 32, 32))
    _reset_peak()
    base = _status_mb("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_region(mask, Path(tmp) / "r.tiff", gen, region=region, progress=False)
        seconds = time.perf_counter() - start
    print(json.dumps({"size": size, "base_mb": base, "peak_mb": _status_mb("VmHWM"), "seconds": seconds}))


def memory(sizes: list[int], steps: int, mode: str, repeats: int = 1) -> list[dict]:
    out = []
    for size in [s for s in sizes for _ in range(repeats)]:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "mask.npy", slide_mask(size, 0))
            cmd = [sys.executable, __file__, "--memory-child", str(Path(tmp) / "mask.npy"), "--mode", mode]
            cmd += ["--num-inference-steps", str(steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(out[-1], file=sys.stderr, flush=True)
    return out


# ----------------------------------------------------------------------------------------------
# picture
# ----------------------------------------------------------------------------------------------
def legend_strip(img, caption: str, height: int = 28):
    """``img`` (a PIL picture) with a strip below it: the label colours and names, then ``caption``."""
    from PIL import Image, ImageDraw, ImageFont

    from monai_disc.labels import LABEL_COLORS, LABEL_NAMES

    out = Image.new("RGB", (img.width, img.height + height), (255, 255, 255))
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=14)
    x, y = 6, img.height + 6
    for label, name in zip(LABEL_COLORS, LABEL_NAMES):
        draw.rectangle([x, y, x + 16, y + 16], fill=LABEL_COLORS[label], outline=(0, 0, 0))
        draw.text((x + 21, y), name, fill=(0, 0, 0), font=font)
        x += 70
    draw.text((x + 10, y), caption, fill=(0, 0, 0), font=font)
    return out


def picture(
    out_dir: Path, size: int, steps: int, mode: str, seed: int, generator: str, guidance: float, width: int = 1200
) -> None:
    from PIL import Image

    from monai_disc.labels import colorize

    gen = load_generator(generator, BUNDLES, num_inference_steps=steps, guidance_scale=guidance)
    mask = slide_mask(size, seed)
    region_sampler = RegionSampler(gen.sampler, mode=mode, window_batch_size=32, progress=True)
    region, t_region = _timed(region_sampler.sample, torch.from_numpy(mask), gen.autoencoder, gen.denoiser, seed)
    naive, t_naive = _timed(naive_tiling, mask, gen, seed)
    gap = 16
    canvas = np.full((size, 3 * size + 2 * gap, 3), 255, np.uint8)
    for i, p in enumerate([colorize(mask), region, naive]):
        canvas[:, i * (size + gap) : i * (size + gap) + size] = p
    img = Image.fromarray(canvas)
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    guided = f", guidance {guidance:g}" if guidance != 1.0 else ""
    caption = f"mask | region sampler ({mode}) | naive tiling: {size} px, {steps} DDIM steps{guided}, {gen.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    legend_strip(img, caption).save(out_dir / "region_2048.png", optimize=True)
    crop = slice(size // 2 - 128, size // 2 + 128)
    zoom = np.concatenate([region[crop, crop], np.full((256, 8, 3), 255, np.uint8), naive[crop, crop]], axis=1)
    Image.fromarray(zoom).save(out_dir / "region_zoom.png", optimize=True)
    print(
        json.dumps(
            {
                "region_seconds": t_region,
                "naive_seconds": t_naive,
                "region_seams": seam_ratio(region),
                "naive_seams": seam_ratio(naive),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--masks", type=int, default=2)
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--edges", action="store_true", help="seams at window edges, rows and columns, at the default")
    parser.add_argument(
        "--decoder-context", action="store_true", help="how far the decoder's chunks disagree, by context given"
    )
    parser.add_argument("--edge-rules", nargs="+", default=None, choices=list(EDGE_RULES), metavar="RULE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory", action="store_true", help="measure peak memory per region size instead")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=1, help="memory runs per size (the median is reported)")
    parser.add_argument("--mode", default="average", choices=["average", "shift"])
    parser.add_argument("--generator", default="sd", choices=list(GENERATORS))
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument(
        "--rules",
        nargs="+",
        default=list(RULES),
        choices=list(RULES),
        metavar="RULE",
        help="window rules to compare (default: all)",
    )
    parser.add_argument("--picture", type=Path, help="write the docs picture into this folder instead")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.decoder_context:
        print(context_table(args.size, args.masks, args.seed, args.generator))
    elif args.edges:
        steps = args.num_inference_steps if "--num-inference-steps" in sys.argv else None
        print(edges_table(args.size, args.masks, steps, args.seed, args.generator, args.edge_rules))
    elif args.memory_child:
        _memory_child(args.memory_child, args.num_inference_steps, args.mode)
    elif args.memory:
        runs = memory(args.sizes, args.num_inference_steps, args.mode, args.repeats)
        for size in args.sizes:
            above = [r["peak_mb"] - r["base_mb"] for r in runs if r["size"] == size]
            seconds = np.median([r["seconds"] for r in runs if r["size"] == size])
            print(
                f"{size} px: {np.median(above):.0f} MB above the loaded networks (median of {len(above)} runs: "
                f"{', '.join(f'{a:.0f}' for a in above)}), {seconds:.0f} s"
            )
    elif args.picture:
        picture(
            args.picture, args.size, args.num_inference_steps, args.mode, args.seed, args.generator, args.guidance_scale
        )
    else:
        table = compare(
            args.size, args.masks, args.num_inference_steps, args.seed, args.generator, args.guidance_scale, args.rules
        )
        print(format_table(table, args.size, args.masks, args.num_inference_steps, args.generator, args.guidance_scale))


if __name__ == "__main__":
    main()
