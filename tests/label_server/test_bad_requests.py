"""Malformed and impossible requests get a 4xx with a one-line reason naming the field, file, image id or model,
before any work starts; the server keeps serving."""

from __future__ import annotations

import json

import numpy as np
import pytest
from label_client import MAX_REGION_PIXELS, png

QUPATH_PARAMS = {"foreground": [], "background": [], "max_workers": 1}
REGION = {"level": 0, "location": [0, 0], "size": [128, 128], "tile_size": [1024, 1024], "min_poly_area": 30}


def _slide_bytes(server) -> bytes:
    return (server.studies / "slide.tiff").read_bytes()


def _corrupt_tiles(data: bytes) -> bytes:
    """The toy slide with the middle half of its file (tile data) overwritten: its header still opens."""
    data = bytearray(data)
    start, stop = len(data) // 4, 3 * len(data) // 4
    data[start:stop] = (b"\xff\xd8\xff\xc0\x00\x01" * (len(data) // 12 + 1))[: stop - start]
    return bytes(data)


def _bad_compression(data: bytes) -> bytes:
    """The toy slide with every Compression tag (259) set to 52479, as the issue's slide had."""
    import struct

    import tifffile

    data = bytearray(data)
    with tifffile.TiffFile(__import__("io").BytesIO(bytes(data))) as tif:
        for page in tif.pages:
            tag = page.tags["Compression"]
            struct.pack_into("<H", data, tag.valueoffset, 52479)
    return bytes(data)


# name -> (method, path, request kwargs builder, status, words the detail must hold)
CASES = {
    "wsi_v2 wsi not JSON": ("post", "/infer/wsi_v2/carcinonet?image=slide", lambda s: {"data": {"wsi": "{level: 0"}},
                            400, ["'wsi'", "not JSON"]),
    "wsi body not JSON": ("post", "/infer/wsi/carcinonet?image=slide&output=asap", lambda s: {"data": "level=0"},
                          400, ["'body'", "not JSON"]),
    "params not JSON": ("post", "/infer/carcinonet?image=slide", lambda s: {"data": {"params": "[1,"}},
                        400, ["'params'", "not JSON"]),
    "unknown model /infer": ("post", "/infer/segmentation_spleen?image=slide", lambda s: {}, 404,
                             ["'segmentation_spleen'", "carcinonet", "gleason_ldm"]),
    "unknown model /infer/wsi_v2": ("post", "/infer/wsi_v2/nuclick?image=slide",
                                    lambda s: {"data": {"wsi": json.dumps(REGION)}}, 404, ["'nuclick'", "carcinonet"]),
    "unknown image": ("post", "/infer/wsi/carcinonet?image=no_such_slide&output=asap",
                      lambda s: {"data": json.dumps(REGION)}, 404, ["'no_such_slide'", "not found"]),
    "image file not found /infer": ("post", "/infer/carcinonet?image=gone&output=image", lambda s: {}, 404,
                                    ["'gone'", "not found"]),
    "unreadable slide upload": ("post", "/infer/wsi_v2/carcinonet?output=asap",
                                lambda s: {"files": {"file": ("broken.tiff", _corrupt_tiles(_slide_bytes(s)))},
                                           "data": {"wsi": json.dumps({**REGION, "size": [0, 0]})}}, 400,
                                ["broken.tiff", "OpenSlideError"]),
    "unsupported compression upload": ("post", "/infer/wsi_v2/carcinonet?output=asap",
                                       lambda s: {"files": {"file": ("c52479.tiff", _bad_compression(_slide_bytes(s)))},
                                                  "data": {"wsi": json.dumps(REGION)}}, 400, ["c52479.tiff"]),
    "not a picture upload": ("post", "/infer/wsi_v2/carcinonet?output=asap",
                             lambda s: {"files": {"file": ("notes.tiff", b"II*\x00 not a slide" * 20)},
                                        "data": {"wsi": json.dumps(REGION)}}, 400, ["notes.tiff"]),
    "gleason_ldm without file": ("post", "/infer/gleason_ldm?output=image", lambda s: {"data": {"params": "{}"}},
                                 400, ["gleason_ldm", "no input"]),
    "unknown region param": ("post", "/infer/wsi/carcinonet?image=slide&output=asap",
                             lambda s: {"data": json.dumps({**REGION, "params": {**QUPATH_PARAMS, "threshold": 0.5}})},
                             400, ["carcinonet", "unknown parameter", "'threshold'"]),
    "unknown wsi field": ("post", "/infer/wsi/carcinonet?image=slide&output=asap",
                          lambda s: {"data": json.dumps({**REGION, "magnification": 20})}, 400, ["'magnification'"]),
    "region outside slide": ("post", "/infer/wsi/carcinonet?image=slide&output=asap",
                             lambda s: {"data": json.dumps({**REGION, "location": [400, 400], "size": [256, 256]})},
                             400, ["slide", "512 x 512"]),
    "bad output": ("post", "/infer/wsi/carcinonet?image=slide&output=svg", lambda s: {"data": json.dumps(REGION)},
                   400, ["'output'", "asap"]),
    "screen-dpi slide": ("post", "/infer/wsi/carcinonet?image=screen72&output=asap",
                         lambda s: {"data": json.dumps(REGION)}, 400,
                         ["screen72", "XResolution=72", "inch", "base_mpp"]),
    "train unknown model": ("post", "/train/nosuchmodel", lambda s: {"data": '{"max_epochs":1}'}, 404,
                            ["'nosuchmodel'", "carcinonet"]),
    "train gleason_ldm": ("post", "/train/gleason_ldm", lambda s: {"data": "{}"}, 404, ["'gleason_ldm'"]),
    "train max_epochs 0": ("post", "/train/carcinonet", lambda s: {"data": '{"max_epochs":0}'}, 400,
                           ["'max_epochs'", "0"]),
    "train max_epochs two": ("post", "/train/carcinonet", lambda s: {"data": '{"max_epochs":"two"}'}, 400,
                             ["'max_epochs'", "'two'"]),
    "train unknown param": ("post", "/train/carcinonet", lambda s: {"data": '{"epochs":1}'}, 400, ["'epochs'"]),
    "label value 7": ("put", "/datastore/label?image=slide-patch-a&tag=final",
                      lambda s: {"files": {"label": ("seven.png", png(np.full((128, 128), 7, np.uint8)))}}, 400,
                      ["seven.png", "[7]"]),
    "label wrong size": ("put", "/datastore/label?image=slide-patch-a&tag=final",
                         lambda s: {"files": {"label": ("small.png", png(np.ones((64, 64), np.uint8)))}}, 400,
                         ["small.png", "64 x 64", "'slide-patch-a'", "128 x 128"]),
    "label colour picture": ("put", "/datastore/label?image=slide-patch-a&tag=final",
                             lambda s: {"files": {"label": ("rgb.png", png(np.ones((128, 128, 3), np.uint8)))}}, 400,
                             ["rgb.png", "single-channel"]),
    "label unknown class": ("put", "/datastore/label?image=slide-patch-a",
                            lambda s: {"files": {"label": ("t.xml", b'<ASAP_Annotations><Annotations><Annotation '
                                                 b'Name="Tumor"><Coordinates><Coordinate X="1" Y="1"/><Coordinate '
                                                 b'X="9" Y="1"/><Coordinate X="9" Y="9"/></Coordinates></Annotation>'
                                                 b"</Annotations></ASAP_Annotations>")}}, 400, ["t.xml", "'Tumor'"]),
    "label unknown image": ("put", "/datastore/label?image=nowhere",
                            lambda s: {"files": {"label": ("l.png", png(np.ones((8, 8), np.uint8)))}}, 404,
                            ["'nowhere'"]),
    "label params not JSON": ("put", "/datastore/label?image=slide-patch-a",
                              lambda s: {"files": {"label": ("l.png", png(np.ones((8, 8), np.uint8)))},
                                         "data": {"params": "{'a': 1}"}}, 400, ["'params'"]),
    "next sample unknown strategy": ("post", "/activelearning/wsi_random", lambda s: {"data": "{}"}, 404,
                                     ["'wsi_random'", "random"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def patch_a(server):
    """A 128 px datastore tile the label cases refer to."""
    r = server.put(
        "/datastore/image?image=slide-patch-a", files={"file": ("a.png", png(np.zeros((128, 128, 3), np.uint8)))}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_with_a_reason(server, patch_a, case):
    method, path, build, status, words = CASES[case]
    r = getattr(server, method)(path, **build(server))
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail, detail
    for word in words:
        assert word in detail, (word, detail)
    assert server.get("/info/").status_code == 200


def test_regions_above_the_cap_are_refused_before_any_tile(server):
    log_before = server.log.read_text()
    whole = {**REGION, "size": [0, 0]}  # QuPath without a ROI: the whole 1024 px slide
    r = server.post("/infer/wsi/carcinonet?image=big&output=asap", data=json.dumps(whole))
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "1024 x 1024" in detail and str(MAX_REGION_PIXELS) in detail and "--conf max_region_pixels" in detail
    r = server.post("/infer/wsi/carcinonet?image=big&output=asap", data=json.dumps({**whole, "size": [200000, 200000]}))
    assert r.status_code == 400 and "1024 x 1024" in r.json()["detail"], r.text
    tiny_tiles = {**REGION, "size": [512, 512], "tile_size": [16, 16]}  # 1024 tiles
    r = server.post("/infer/wsi/carcinonet?image=big&output=asap", data=json.dumps(tiny_tiles))
    assert r.status_code == 413 and "max_region_tiles" in r.json()["detail"] and "1024 tiles" in r.json()["detail"]
    new_log = server.log.read_text()[len(log_before) :]
    assert "big.tiff =>" not in new_log and "progress per tile" not in new_log  # no tile ran, none was planned
    # within the cap the same slide runs, with progress per tile in the log
    r = server.post(
        "/infer/wsi/carcinonet?image=big&output=json",
        data=json.dumps({**REGION, "size": [512, 512], "tile_size": [256, 256]}),
    )
    assert r.status_code == 200, r.text
    new_log = server.log.read_text()[len(log_before) :]
    assert "in 4 tile(s)" in new_log and "4 / 4" in new_log
