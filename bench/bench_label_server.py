"""The label server under load: ``/info/`` latency while a 2048 px region runs, and 20 concurrent tile requests
against the same 20 sent one after another.

Starts a real ``monai-disc label-server`` on 127.0.0.1 (with the Python path of the environment, so the same bench
measures another checkout: ``PYTHONPATH=/other/tree python bench/bench_label_server.py``), writes a 2048 x 2048 px
tiled slide (0.5 um/px, tissue-like colours) and ``--tiles`` 64 px toy tiles into its datastore, then measures

* ``/info/`` round trips sent every 0.25 s while one region of 2048 x 2048 px in 1024 px tiles (QuPath's tile size)
  runs: median and maximum latency, and the region's own time;
* ``--tiles`` tile requests (``POST /infer/carcinonet?image=ID&output=image``) one after another, then all at once:
  wall time of each, and the largest single latency of the concurrent round; whether both rounds gave the same
  bytes.

    python bench/bench_label_server.py [--tiles 20] [--region 2048] [--conf infer_workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

__all__ = ["main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_slide(path: Path, side: int) -> None:
    import tifffile

    rng = np.random.default_rng(0)
    small = rng.integers(0, 3, (side // 64, side // 64))
    colours = np.array([[240, 238, 242], [215, 130, 185], [120, 60, 150]], np.uint8)
    rgb = np.repeat(np.repeat(colours[small], 64, 0), 64, 1)
    rgb = np.clip(rgb.astype(np.int16) + rng.integers(-12, 12, rgb.shape), 0, 255).astype(np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, photometric="rgb", tile=(256, 256), compression="deflate", resolution=(20000, 20000),
                  resolutionunit="CENTIMETER")  # fmt: skip


def _start(studies: Path, log: Path, conf: list[tuple[str, str]]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "monai_disc.apps.cli", "label-server", "--studies", str(studies), "--port", str(port)]
    for key, value in conf:
        cmd += ["--conf", key, value]
    out = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-2000:]}")
        try:
            if requests.get(url + "/info/", timeout=5).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server not up after 300 s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _tile(url: str, name: str) -> tuple[bytes, float]:
    start = time.monotonic()
    r = requests.post(f"{url}/infer/carcinonet?image={name}&output=image", timeout=600)
    r.raise_for_status()
    return r.content, time.monotonic() - start


def _info_during_region(url: str, side: int) -> dict[str, float]:
    # QuPath's region fields; no click params, which the unchanged app refused (so one bench measures both)
    wsi = {"level": 0, "location": [0, 0], "size": [side, side], "tile_size": [1024, 1024], "min_poly_area": 30}
    done = threading.Event()
    region: dict[str, float] = {}

    def run_region() -> None:
        start = time.monotonic()
        r = requests.post(f"{url}/infer/wsi/carcinonet?image=region&output=asap", json=wsi, timeout=900)
        region["status"], region["seconds"] = r.status_code, time.monotonic() - start
        done.set()

    thread = threading.Thread(target=run_region)
    thread.start()
    time.sleep(0.5)
    latencies = []
    while not done.is_set():
        start = time.monotonic()
        requests.get(url + "/info/", timeout=900).raise_for_status()
        latencies.append(time.monotonic() - start)
        time.sleep(0.25)
    thread.join()
    return {"region_s": region["seconds"], "region_status": region["status"], "info_calls": len(latencies),
            "info_median_s": statistics.median(latencies) if latencies else float("nan"),
            "info_max_s": max(latencies) if latencies else float("nan")}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=20, help="tile requests per round")
    p.add_argument("--region", type=int, default=2048, help="side of the region job, px")
    p.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="server --conf")
    p.add_argument("--out", default=None, help="JSON file of the figures")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        studies = Path(tmp) / "studies"
        studies.mkdir()
        _write_slide(studies / "region.tiff", args.region)
        rng = np.random.default_rng(1)
        names = [f"tile_{i:02d}" for i in range(args.tiles)]
        for name in names:
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(studies / f"{name}.png")
        proc, url = _start(studies, Path(tmp) / "server.log", [tuple(c) for c in args.conf])
        try:
            _tile(url, names[0])  # loads the network
            figures = _info_during_region(url, args.region)
            start = time.monotonic()
            serial = [_tile(url, n) for n in names]
            figures["serial_wall_s"] = time.monotonic() - start
            figures["serial_max_latency_s"] = max(t for _, t in serial)
            start = time.monotonic()
            with ThreadPoolExecutor(max_workers=len(names)) as pool:
                concurrent = list(pool.map(lambda n: _tile(url, n), names))
            figures["concurrent_wall_s"] = time.monotonic() - start
            figures["concurrent_max_latency_s"] = max(t for _, t in concurrent)
            figures["concurrent_min_latency_s"] = min(t for _, t in concurrent)
            figures["same_bytes"] = [c for c, _ in serial] == [c for c, _ in concurrent]
        finally:
            _stop(proc)
    figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    print(json.dumps(figures, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
