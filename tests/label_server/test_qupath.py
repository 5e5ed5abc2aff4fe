"""QuPath's MONAI Label extension, replayed request for request against the real server.

Every request below is built field by field as the extension's Java code builds it (Project-MONAI/MONAILabel,
plugins/qupath/src/main/java/qupath/lib/extension/monailabel/):
- MonaiLabelClient.java: ``info()`` GET /info/; ``imageExists`` HEAD /datastore/image?image=ID; ``infer`` the
  ``RequestInfer`` body (level 0, location, size, tile_size [1024, 1024], min_poly_area 30, params
  {foreground: [], background: [], max_workers: 1}) as JSON to POST /infer/wsi/{model}?output=asap&image=ID when
  the server holds the image, else as multipart ``file`` + ``wsi`` to POST /infer/wsi_v2/{model}?output=asap;
  ``saveImage`` / ``saveLabel`` multipart PUTs with a ``params`` field "{}"; ``train`` POST /train/{model};
  ``nextSample`` POST /activelearning/{strategy}.
- RequestUtils.java: plain requests carry the body as a string with no Content-Type header; multipart bodies are
  built by hand (see ``label_client.java_multipart``); any status but 200 is an error to QuPath.
- commands/RunInference.java: the ROI's bbox (size [0, 0] without a ROI); an image not on the server is sent as
  a PNG patch of the ROI with location and size reset to 0; the answer's ASAP ``Annotation`` elements become
  polygons (``Name`` is the class, ``Coordinate`` X, Y plus the patch offset).
- commands/SubmitLabel.java: the annotations as ASAP XML (coordinates relative to the patch, or to the image with
  bbox [0, 0, 0, 0]); a patch of an image not on the server is uploaded first as ``<image>-patch-x_y_w_h``.
- commands/RunTraining.java: body ``{"max_epochs":N,"train_batch_size":1,"val_batch_size":1}`` (dialog defaults
  10, 1, 1; N = 1 here to keep the test short).
- commands/NextSample.java: body ``{"image": "ID", "patch_size": [1024, 1024],"image_size": [w, h]}``.
"""

from __future__ import annotations

import io
import json
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from label_client import GRADES, java_multipart, png, sha
from PIL import Image

from monai_disc.monailabel import REPO_BUNDLES
from monai_disc.networks.carcinonet import carcinonet_toy


def request_infer(bbox: list[int], tile_size: int = 1024) -> str:
    """Gson's JSON of MonaiLabelClient.RequestInfer filled as RunInference.runInference fills it."""
    body = {
        "level": 0,
        "location": [bbox[0], bbox[1]],
        "size": [bbox[2], bbox[3]],
        "tile_size": [tile_size, tile_size],
        "min_poly_area": 30,
        "params": {"foreground": [], "background": [], "max_workers": 1},
    }
    return json.dumps(body, separators=(",", ":"))


def asap_polygons(xml: bytes, offset: tuple[int, int] = (0, 0)) -> list[tuple[str, np.ndarray]]:
    """RunInference.updateAnnotations: (class, (N, 2) points) per Coordinates element of every Annotation."""
    out = []
    for annotation in ET.fromstring(xml).iter("Annotation"):
        name = annotation.get("Name")
        for coordinates in annotation:
            points = [(offset[0] + float(c.get("X")), offset[1] + float(c.get("Y"))) for c in coordinates]
            if points:
                out.append((name, np.asarray(points)))
    return out


def asap_label(polygons: list[tuple[str, list[tuple[int, int]]]], bbox: list[int]) -> bytes:
    """SubmitLabel.getAnnotationsXml: the annotations relative to ``bbox`` as the Java transformer writes them."""
    root = ET.Element("ASAP_Annotations")
    group = ET.SubElement(root, "Annotations", Name="", Description="")
    for key, value in zip("XYWH", bbox):
        group.set(key, str(value))
    colours = {}
    for name, points in polygons:
        colours[name] = "#c80000"
        a = ET.SubElement(group, "Annotation", Name=name, Type="Polygon", PartOfGroup=name, Color=colours[name])
        coords = ET.SubElement(a, "Coordinates")
        for j, (x, y) in enumerate(points):
            ET.SubElement(coords, "Coordinate", Order=str(j), X=str(x - bbox[0]), Y=str(y - bbox[1]))
    groups = ET.SubElement(root, "AnnotationGroups")
    for name, colour in colours.items():
        ET.SubElement(groups, "Group", Name=name, PartOfGroup="None", Color=colour)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n' + ET.tostring(root)


def _slide_rgb(server) -> np.ndarray:
    import openslide

    with openslide.OpenSlide(str(server.studies / "slide.tiff")) as slide:
        return np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))


def qupath_put(server, path: str, part: str, filename: str, content: bytes, mime: str):
    body, content_type = java_multipart({part: (filename, content, mime)}, {"params": "{}"})
    return server.put(path, data=body, headers={"Content-Type": content_type})


def test_info_as_the_extension_reads_it(server):
    r = server.get("/info/")
    assert r.status_code == 200
    info = r.json()
    model = info["models"]["carcinonet"]  # MonaiLabelClient.Model: type, dimension, labels (map), pathology
    assert model["labels"] == GRADES and model["type"] == "segmentation" and model["pathology"] is True
    assert "random" in info["strategies"] and "carcinonet" in info["trainers"]


@pytest.mark.parametrize("bbox", [[64, 32, 384, 416], [0, 0, 0, 0]], ids=["roi", "no-roi"])
def test_annotations_on_an_image_the_server_holds(server, bbox):
    assert server.head("/datastore/image?image=slide").status_code == 200  # imageExists
    r = server.post("/infer/wsi/carcinonet?output=asap&image=slide", data=request_infer(bbox))
    assert r.status_code == 200, r.text
    assert "Content-Type" not in r.request.headers  # sent as QuPath sends it: a bare string body
    polygons = asap_polygons(r.content)
    assert polygons, "graded toy tissue should give polygons"
    x, y, w, h = bbox if bbox[2] else (0, 0, 512, 512)  # no ROI: the whole 512 px slide
    for name, points in polygons:
        assert name in GRADES and len(points) >= 3
        assert (points[:, 0] >= x).all() and (points[:, 0] < x + w).all()
        assert (points[:, 1] >= y).all() and (points[:, 1] < y + h).all()
    # the interaction fields were accepted and dropped, and said so in the log
    assert "ignored ['background', 'foreground', 'max_workers']" in server.log.read_text()


def test_annotations_on_an_image_the_server_lacks(server):
    assert server.head("/datastore/image?image=my_local_slide").status_code != 200
    # RunInference writes the ROI as a PNG patch and resets location and size to 0 (clicks: none)
    patch = _slide_rgb(server)[100:292, 40:296]
    bbox = [40, 100, 256, 192]
    body, content_type = java_multipart(
        {"file": ("patch4711.png", png(patch), "image/png")}, {"wsi": request_infer([0, 0, 0, 0])}
    )
    r = server.post("/infer/wsi_v2/carcinonet?output=asap", data=body, headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text
    polygons = asap_polygons(r.content, offset=(bbox[0], bbox[1]))
    assert polygons
    for name, points in polygons:
        assert name in GRADES
        assert (points[:, 0] >= bbox[0]).all() and (points[:, 0] < bbox[0] + bbox[2]).all()
        assert (points[:, 1] >= bbox[1]).all() and (points[:, 1] < bbox[1] + bbox[3]).all()


def test_submit_label_of_a_patch_then_of_the_held_slide(server):
    # image not on the server: the patch goes up first, then its label relative to the patch
    bbox = [40, 100, 160, 128]
    patch = _slide_rgb(server)[100:228, 40:200]
    patch_name = "my_local_slide-patch-" + "_".join(str(v) for v in bbox)
    r = qupath_put(server, f"/datastore/image?image={patch_name}", "file", "patch99.png", png(patch), "image/png")
    assert r.status_code == 200 and r.json()["image"] == patch_name, r.text
    square = [(60, 120), (120, 120), (120, 180), (60, 180)]  # image coordinates, as QuPath holds them
    xml = asap_label([("GG4", square)], bbox)
    r = qupath_put(
        server, f"/datastore/label?image={patch_name}", "label", "my_local_slide42.xml", xml, "application/xml"
    )
    assert r.status_code == 200, r.text
    stored = np.asarray(Image.open(server.studies / "labels" / "final" / f"{patch_name}.png"))
    assert stored.shape == (128, 160)
    inside = stored[20 + 2 : 80 - 2, 20 + 2 : 80 - 2]  # the square, 20..80 px into the patch
    assert (inside == GRADES["GG4"]).all() and (stored == GRADES["GG4"]).sum() < 65 * 65
    assert set(np.unique(stored)) == {0, GRADES["GG4"]}

    # image on the server: SubmitLabel sends the whole image's annotations with bbox [0, 0, 0, 0]
    triangle = [(300, 300), (380, 300), (300, 380)]
    xml = asap_label([("GG3", square), ("GG5", triangle)], [0, 0, 0, 0])
    r = qupath_put(server, "/datastore/label?image=slide", "label", "slide17.xml", xml, "application/xml")
    assert r.status_code == 200, r.text
    tile = r.json()["image"]
    x, y, w, h = (int(v) for v in tile.rsplit("-patch-", 1)[1].split("_"))
    assert x <= 60 and y <= 120 and x + w >= 380 and y + h >= 380  # the region both polygons cover
    label = np.asarray(Image.open(server.studies / "labels" / "final" / f"{tile}.png"))
    assert label.shape == (h, w)
    assert label[150 - y, 90 - x] == GRADES["GG3"] and label[310 - y, 310 - x] == GRADES["GG5"]
    expected = _slide_rgb(server)[y : y + h, x : x + w]
    np.testing.assert_array_equal(np.asarray(Image.open(server.studies / f"{tile}.png").convert("RGB")), expected)


def test_next_sample(server):
    body = '{"image": "slide", "patch_size": [1024, 1024],"image_size": [512, 512]}'  # NextSample's StringBuilder
    r = server.post("/activelearning/random", data=body)
    assert r.status_code == 200, r.text
    assert r.json()["id"] and r.json()["path"]


def test_zz_training_as_qupath_starts_it(server, uploaded):
    """Runs last in this folder: the new weights change what the other tests' inference gives."""
    label_dir = server.studies / "labels" / "final"
    before = {p.name: sha(p) for p in label_dir.glob("*.png")}
    bundle_weights = REPO_BUNDLES / "carcinonet" / "models" / "model.pt"
    bundle_sha = sha(bundle_weights)
    body = '{"max_epochs":' + str(1) + ',"train_batch_size":' + str(1) + ',"val_batch_size":' + str(1) + "}"
    r = server.post("/train/carcinonet", data=body)
    assert r.status_code == 200, r.text
    run = r.json()["request"]["name"]
    deadline = time.monotonic() + 300
    while (status := server.get("/train/").json())["status"] in (
        "SUBMITTED",
        "RUNNING",
    ) and time.monotonic() < deadline:
        time.sleep(1)
    assert status["status"] == "DONE", status.get("details", [])[-5:]
    published = server.studies / "models" / "carcinonet.pt"
    assert published.is_file() and (server.studies / "models" / "carcinonet" / run / "model.pt").is_file()
    assert not (server.studies / "models" / ".carcinonet.pt.staging").exists()
    new = torch.load(published, map_location="cpu", weights_only=True)
    new = new.get("model", new)
    old = torch.load(bundle_weights, map_location="cpu", weights_only=True)
    assert set(new) == set(old)
    assert any(not torch.equal(new[k], old[k]) for k in old if old[k].is_floating_point())
    assert sha(bundle_weights) == bundle_sha
    assert {p.name: sha(p) for p in label_dir.glob("*.png")} == before
    # inference now serves the new version: the bundle's network with the published weights
    name, rgb, _ = uploaded[0]
    r = server.post(f"/infer/carcinonet?image={name}&output=image")
    assert r.status_code == 200, r.text
    network = carcinonet_toy()
    network.load_state_dict(new)
    with torch.no_grad():
        logits = network.eval()(torch.as_tensor(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1.0)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), logits.argmax(1)[0].numpy())
