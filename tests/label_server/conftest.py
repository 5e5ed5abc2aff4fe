"""One real MONAI Label server of the monai_disc app on 127.0.0.1 for the tests of this folder, started by
`monai-disc label-server` (as a user starts it) and stopped after the last of them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("monailabel", reason="the [monailabel] extra is not installed")
requests = pytest.importorskip("requests")

from label_client import MAX_REGION_PIXELS, Server, png  # noqa: E402

from monai_disc.data.toy import make_toy_sicapv2  # noqa: E402
from monai_disc.transforms import sicapv2_tile_transforms  # noqa: E402
from monai_disc.visualize import to_uint8  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_slides(studies: Path) -> None:
    """Two more slides: big.tiff (1024 px, above the tests' region cap whole) and screen72.tiff (72 dpi tags)."""
    import tifffile

    rgb = np.full((1024, 1024, 3), 235, np.uint8)
    rgb[200:800, 150:900] = (170, 80, 150)
    options = {"photometric": "rgb", "tile": (256, 256), "compression": "deflate"}
    with tifffile.TiffWriter(studies / "big.tiff") as tif:  # 0.5 um/px in centimetre units, as scanners write
        tif.write(rgb, resolution=(20000, 20000), resolutionunit="CENTIMETER", subifds=0, **options)
    with tifffile.TiffWriter(studies / "screen72.tiff") as tif:  # as an image editor writes it
        tif.write(rgb[:512, :512], resolution=(72, 72), resolutionunit="INCH", **options)


def labelled_tiles(toy: Path, n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The first ``n`` toy tiles with a grade: (name, RGB uint8, labels 0..3 snapped from the SICAPv2 JPEG mask)."""
    load = sicapv2_tile_transforms()
    out = []
    for path in sorted((toy / "images").glob("*.jpg")):
        item = load({"image": str(path), "mask": str(toy / "masks" / path.name)})
        labels = item["mask"][0].numpy().astype(np.uint8)
        if labels.any():
            out.append((path.stem, to_uint8(item["image"]), labels))
        if len(out) == n:
            return out
    raise AssertionError(f"the toy set has fewer than {n} tiles with a grade")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_server")
    toy = make_toy_sicapv2(
        root / "toy", n_slides=5, tile_size=64, seed=0, tiles_per_slide=(2, 3), n_wsi=3, wsi_size=(512, 512)
    )
    studies = root / "studies"
    studies.mkdir()
    # the toy slide with the most graded tissue (radboud mask values 3..5) is the slide QuPath would open
    best = None
    for image in sorted((toy / "panda" / "train_images").glob("*.tiff")):
        mask_path = toy / "panda" / "train_label_masks" / f"{image.stem}_mask.tiff"
        with Image.open(mask_path) as m:
            mask = np.asarray(m.convert("RGB"))[..., 0]
        if best is None or (mask >= 3).sum() > (best[1] >= 3).sum():
            best = (image, mask)
    shutil.copy(best[0], studies / "slide.tiff")
    _write_slides(studies)

    port = _free_port()
    log = open(root / "server.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "monai_disc.apps.cli", "label-server", "--studies", str(studies), "--port", str(port)]
    cmd += ["--conf", "max_region_pixels", str(MAX_REGION_PIXELS)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited ({proc.returncode}):\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                if requests.get(url + "/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not up after 180 s:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(url, root, studies, toy, best[1])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture(scope="session")
def uploaded(server):
    """Four graded toy tiles put into the datastore over HTTP, each with its final label (PNG 0..3)."""
    tiles = labelled_tiles(server.toy, 4)
    for name, rgb, labels in tiles:
        r = server.put(f"/datastore/image?image={name}", files={"file": (f"{name}.png", png(rgb), "image/png")})
        assert r.status_code == 200, r.text
        r = server.put(
            f"/datastore/label?image={name}&tag=final",
            files={"label": (f"{name}.png", png(labels), "image/png")},
        )
        assert r.status_code == 200, r.text
    return tiles
