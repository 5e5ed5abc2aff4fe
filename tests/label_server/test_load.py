"""A bounded load test on 127.0.0.1: a region job, tile requests and /info/ at once. Nothing waits for an
unrelated request, and concurrent answers equal serial ones.

Bounded: 1 region (64 tiles of 64 px), 8 tile requests, 3 /info/ calls, each sent twice (serial, then at once);
every request times out after 120 s.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

N_TILES = 8


def _tile(server, name: str) -> tuple[bytes, float]:
    r = server.post(f"/infer/carcinonet?image={name}&output=image")
    assert r.status_code == 200, r.text
    return r.content, time.monotonic()


def _region(server) -> tuple[str, float]:
    wsi = {"level": 0, "location": [0, 0], "size": [512, 512], "tile_size": [64, 64], "min_poly_area": 30}
    r = server.post("/infer/wsi/carcinonet?image=slide&output=json", data=json.dumps(wsi))
    assert r.status_code == 200, r.text
    polygons = [a.get("annotation", {}).get("elements", []) for a in r.json()["annotations"]]  # no latencies
    return json.dumps(polygons, sort_keys=True), time.monotonic()


def _info(server) -> float:
    assert server.get("/info/").status_code == 200
    return time.monotonic()


def test_info_and_tiles_answer_while_a_region_runs_and_match_serial(server, uploaded):
    names = [name for name, _, _ in uploaded] * (N_TILES // len(uploaded))
    serial_tiles = [_tile(server, n)[0] for n in names]
    serial_region, _ = _region(server)
    with ThreadPoolExecutor(max_workers=N_TILES + 4) as pool:
        region = pool.submit(_region, server)
        time.sleep(0.5)  # the region is under way
        infos = [pool.submit(_info, server) for _ in range(3)]
        tiles = [pool.submit(_tile, server, n) for n in names]
        info_done = [f.result(timeout=120) for f in infos]
        tile_results = [f.result(timeout=120) for f in tiles]
        region_annotations, region_done = region.result(timeout=120)
    # /info/ did not wait for the region (MONAI Label 0.8.5 alone answers it after the region)
    assert max(info_done) < region_done, "an /info/ call waited for the region job"
    assert max(done for _, done in tile_results) < region_done, "a tile request waited for the region job"
    assert region_annotations == serial_region and "contours" in serial_region
    assert [content for content, _ in tile_results] == serial_tiles
