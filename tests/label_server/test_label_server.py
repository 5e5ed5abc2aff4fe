"""A real MONAI Label server of the monai_disc app on 127.0.0.1, started once for this module by `monai-disc
label-server`, driven over HTTP the way QuPath's extension and curl drive it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("monailabel", reason="the [monailabel] extra is not installed")
requests = pytest.importorskip("requests")

from label_client import GRADES, STEPS, png  # noqa: E402

from monai_disc.monailabel import REPO_BUNDLES  # noqa: E402
from monai_disc.networks.carcinonet import carcinonet_toy  # noqa: E402
from monai_disc.visualize import save_picture, to_uint8  # noqa: E402


def test_info_lists_models_labels_and_types(server):
    info = server.get("/info/").json()
    models = info["models"]
    assert models["carcinonet"]["type"] == "segmentation"
    assert models["carcinonet"]["labels"] == GRADES
    assert models["gleason_ldm"]["type"] == "generator"
    assert models["gleason_ldm"]["labels"] == {"NC": 0, **GRADES}
    from monai_disc.inferers import DEFAULT_GENERATOR, GENERATORS

    choices = models["gleason_ldm"]["config"]["generator"]  # a client shows the first entry as the default
    assert choices[0] == DEFAULT_GENERATOR and sorted(choices) == sorted(GENERATORS)
    trainer = info["trainers"]["carcinonet"]["config"]
    assert {"max_epochs", "train_batch_size", "learning_rate"} <= set(trainer)
    assert "gleason_ldm" not in info["trainers"]


def test_datastore_upload_lists_tiles_with_final_labels(server, uploaded):
    listing = server.get("/datastore/?output=all").json()
    objects = listing["objects"]
    for name, _, labels in uploaded:
        assert "final" in objects[name]["labels"], objects[name]
        stored = np.asarray(Image.open(server.studies / "labels" / "final" / f"{name}.png"))
        np.testing.assert_array_equal(stored, labels)
    assert "slide" in objects


def test_carcinonet_tile_equals_bundle_inference(server, uploaded, tmp_path):
    from monai.bundle import run

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    served = {}
    for name, rgb, _ in uploaded:
        save_picture(rgb, tiles / f"{name}.png")
        r = server.post(f"/infer/carcinonet?image={name}&output=image")
        assert r.status_code == 200, r.text
        served[name] = np.asarray(Image.open(io.BytesIO(r.content)))
    bundle = REPO_BUNDLES / "carcinonet"
    run(
        config_file=str(bundle / "configs" / "inference.yaml"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle),
        dataset_dir=str(tiles),
        output_dir=str(tmp_path / "pred"),
        num_workers=0,
        overlays=False,
    )
    graded = 0
    for name, rgb, _ in uploaded:
        expected = np.asarray(Image.open(tmp_path / "pred" / "labels" / f"{name}.png"))
        assert served[name].shape == rgb.shape[:2] and served[name].dtype == np.uint8
        np.testing.assert_array_equal(served[name], expected)
        graded += int(served[name].any())
    assert graded > 0, "the toy weights should find a grade on graded tiles"


def test_wsi_v2_polygons_lie_in_the_region_with_one_grade_each(server, uploaded):
    x, y, w, h = 64, 32, 384, 416  # split by MONAI Label into 2 x 3 tiles of 192 px
    wsi = {"level": 0, "location": [x, y], "size": [w, h], "tile_size": [192, 192], "min_poly_area": 10}
    r = server.post("/infer/wsi_v2/carcinonet?image=slide&output=json", data={"wsi": json.dumps(wsi)})
    assert r.status_code == 200, r.text
    result = r.json()
    elements = [e for a in result["annotations"] for e in a.get("annotation", {}).get("elements", [])]
    assert elements, "graded toy tissue should give polygons"
    for element in elements:
        assert element["label"] in GRADES  # one grade per element, each polygon belongs to one element
        for polygon in element["contours"]:
            pts = np.asarray(polygon)
            assert pts.ndim == 2 and pts.shape[1] == 2 and len(pts) >= 3
            assert (pts[:, 0] >= x).all() and (pts[:, 0] < x + w).all()
            assert (pts[:, 1] >= y).all() and (pts[:, 1] < y + h).all()
    # each polygon outlines its grade in the bundle network's own prediction of the same 192 px tiles
    import openslide
    from PIL import ImageDraw
    from scipy.ndimage import binary_dilation, binary_fill_holes

    network = carcinonet_toy()
    network.load_state_dict(torch.load(REPO_BUNDLES / "carcinonet" / "models" / "model.pt", weights_only=True))
    network.eval()
    predicted = np.zeros((h, w), np.uint8)
    with openslide.OpenSlide(str(server.studies / "slide.tiff")) as slide:
        for ty in range(0, h, 192):
            for tx in range(0, w, 192):
                tw, th = min(192, w - tx), min(192, h - ty)
                rgb = np.asarray(slide.read_region((x + tx, y + ty), 0, (tw, th)).convert("RGB"))
                with torch.no_grad():
                    logits = network(torch.as_tensor(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1.0)
                predicted[ty : ty + th, tx : tx + tw] = logits.argmax(1)[0].numpy()
    for element in elements:
        grade = binary_dilation(binary_fill_holes(predicted == GRADES[element["label"]]))  # outlines run around
        for polygon in element["contours"]:
            canvas = Image.new("L", (w, h))
            ImageDraw.Draw(canvas).polygon([(px - x, py - y) for px, py in polygon], fill=1)
            inside = np.asarray(canvas, bool)
            assert grade[inside].mean() > 0.9, (element["label"], grade[inside].mean())
    # QuPath's default output: an ASAP XML document
    r = server.post("/infer/wsi_v2/carcinonet?image=slide&output=asap", data={"wsi": json.dumps(wsi)})
    assert r.status_code == 200 and b"<ASAP_Annotations>" in r.content


def _paint(server, mask_png: bytes, **params):
    r = server.post(
        "/infer/gleason_ldm?output=image",
        files={"file": ("mask.png", mask_png, "image/png")},
        data={"params": json.dumps(params)},
    )
    assert r.status_code == 200, r.text
    return r.content


@pytest.mark.parametrize("generator", ["sd", "sc", None])  # None: the request names none
def test_gleason_ldm_tile_follows_seed_and_equals_python_api(server, uploaded, generator, tmp_path):
    from monai_disc.inferers import DEFAULT_GENERATOR, load_generator

    labels = uploaded[1][2]
    mask = png(labels)
    named = {} if generator is None else {"generator": generator}
    first = _paint(server, mask, **named, num_inference_steps=STEPS, seed=1)
    again = _paint(server, mask, **named, num_inference_steps=STEPS, seed=1)
    other = _paint(server, mask, **named, num_inference_steps=STEPS, seed=2)
    assert first == again
    tile = np.asarray(Image.open(io.BytesIO(first)))
    assert tile.shape == (*labels.shape, 3) and tile.dtype == np.uint8
    assert not np.array_equal(tile, np.asarray(Image.open(io.BytesIO(other))))
    api = load_generator(generator or DEFAULT_GENERATOR, REPO_BUNDLES, num_inference_steps=STEPS)
    expected = to_uint8(api.sample(torch.as_tensor(labels, dtype=torch.long)[None], seeds=[1])[0])
    save_picture(expected, tmp_path / "api.png")
    assert (tmp_path / "api.png").read_bytes() == first


def test_gleason_ldm_reads_sicapv2_mask_values(server, uploaded):
    labels = uploaded[1][2]
    sicapv2 = np.array([0, 3, 4, 5], dtype=np.uint8)[labels]
    a = _paint(server, png(labels), num_inference_steps=STEPS, seed=3)
    b = _paint(server, png(sicapv2), num_inference_steps=STEPS, seed=3, mask_values="sicapv2")
    assert a == b


BAD = {
    "corrupt upload": ("carcinonet", b"not a picture", {}, "cannot read image file"),
    "mask values": ("gleason_ldm", png(np.full((64, 64), 7, np.uint8)), {}, "mask value 7"),
    "mask size": ("gleason_ldm", png(np.zeros((72, 72), np.uint8)), {}, "multiples of 16"),
    "unknown param": ("gleason_ldm", png(np.zeros((64, 64), np.uint8)), {"steps": 5}, "unknown parameter"),
    "unknown generator": ("gleason_ldm", png(np.zeros((64, 64), np.uint8)), {"generator": "gan"}, "'generator'"),
    "bad seed": ("gleason_ldm", png(np.zeros((64, 64), np.uint8)), {"seed": "abc"}, "'seed'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_request_names_the_problem_and_server_keeps_serving(server, case):
    model, content, params, expected = BAD[case]
    r = server.post(
        f"/infer/{model}?output=image",
        files={"file": ("upload.png", content, "image/png")},
        data={"params": json.dumps(params)},
    )
    assert r.status_code == 400, (r.status_code, r.text)
    assert expected in r.json()["detail"] and model in r.json()["detail"], r.json()
    assert server.get("/info/").status_code == 200


def test_slides_take_the_wsi_v2_path(server):
    r = server.post("/infer/carcinonet?image=slide&output=image")
    assert r.status_code == 400 and "wsi_v2" in r.json()["detail"], r.text


def test_wsi_v2_rejects_levels_other_than_zero(server):
    wsi = {"level": 1, "location": [0, 0], "size": [128, 128], "tile_size": [128, 128]}
    r = server.post("/infer/wsi_v2/carcinonet?image=slide&output=json", data={"wsi": json.dumps(wsi)})
    assert r.status_code == 400 and "level 0 only" in r.json()["detail"], r.text
