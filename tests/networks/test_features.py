"""Tile feature extractors from local weight files, and per-slide feature caches (resume, rank shards)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from monai_disc.data.tilesets import tile_loader
from monai_disc.networks.carcinonet import IMAGENET_MEAN, IMAGENET_STD, carcinonet_toy
from monai_disc.networks.features import (
    LUNIT_MEAN,
    LUNIT_STD,
    FeatureBagDataset,
    build_extractor,
    extract_bag_features,
)

torch.set_num_threads(1)


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return ((x + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def tiles() -> torch.Tensor:
    return torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture(scope="module")
def carcinonet_file(tmp_path_factory):
    torch.manual_seed(1)
    net = carcinonet_toy().eval()
    path = tmp_path_factory.mktemp("cn") / "model.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_vit_small_dino_loads_lunit_file_and_resizes_with_lunit_normalisation(tmp_path, tiles):
    torch.manual_seed(2)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    path = tmp_path / "dino_vit_small_patch16_ep200.torch"
    torch.save(vit.state_dict(), path)  # plain state dict, no prefix, as released
    extractor = build_extractor("vit_small_dino", path)
    out = extractor(tiles)
    assert out.shape == (2, 384)
    resized = F.interpolate((tiles + 1) / 2, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    lunit = (resized - torch.tensor(LUNIT_MEAN).view(1, 3, 1, 1)) / torch.tensor(LUNIT_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(out, vit(lunit), atol=1e-4)
    assert extractor.pretrained_cfg["input_size"] == (3, 224, 224)
    assert not any(p.requires_grad for p in extractor.parameters()) and not extractor.training


def test_resnet50_extractors_load_torchvision_names_with_their_normalisation(tmp_path, tiles):
    torch.manual_seed(3)
    resnet = timm.create_model("resnet50", pretrained=False).eval()  # torchvision key names, with fc
    imagenet_file = tmp_path / "resnet50-imagenet.pth"
    torch.save(resnet.state_dict(), imagenet_file)
    moco_file = tmp_path / "mocov2_rn50_ep200.torch"
    torch.save({k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}, moco_file)
    with torch.no_grad():
        pooled = {
            "lunit": resnet.forward_head(
                resnet.forward_features(_normalise(tiles, LUNIT_MEAN, LUNIT_STD)), pre_logits=True
            ),
            "imagenet": resnet.forward_head(
                resnet.forward_features(_normalise(tiles, IMAGENET_MEAN, IMAGENET_STD)), pre_logits=True
            ),
        }
    moco = build_extractor("resnet50_mocov2", moco_file)
    imagenet = build_extractor("resnet50_imagenet", imagenet_file)
    assert moco(tiles).shape == (2, 2048) and imagenet(tiles).shape == (2, 2048)
    assert torch.allclose(moco(tiles), pooled["lunit"], atol=1e-4)
    assert torch.allclose(imagenet(tiles), pooled["imagenet"], atol=1e-4)
    assert not torch.allclose(moco(tiles), imagenet(tiles), atol=1e-3)  # the normalisations differ


def test_wrong_missing_or_absent_weight_file_raises_naming_it(tmp_path):
    vit_file = tmp_path / "not_a_resnet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), vit_file)
    with pytest.raises(ValueError, match="not_a_resnet.pth.*does not fit.*shape mismatches"):
        build_extractor("resnet50_mocov2", vit_file)
    with pytest.raises(FileNotFoundError, match="nowhere.torch"):
        build_extractor("vit_small_dino", tmp_path / "nowhere.torch")
    with pytest.raises(ValueError, match="dino_vit_small_patch16_ep200.torch"):
        build_extractor("vit_small_dino")  # nothing is downloaded: the file is required
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        build_extractor("carcinonet_toy", garbage)
    with pytest.raises(ValueError, match="unknown extractor"):
        build_extractor("no_such_model", vit_file)


def test_any_timm_model_uses_its_pretrained_cfg(tmp_path, tiles):
    torch.manual_seed(4)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)  # a DDP-wrapped save
    extractor = build_extractor("resnet18", path)
    assert extractor.num_features == 512 and extractor.input_size is None
    with torch.no_grad():
        assert torch.allclose(extractor(tiles), model(_normalise(tiles, IMAGENET_MEAN, IMAGENET_STD)), atol=1e-5)


def test_carcinonet_toy_extractor_is_the_pooled_encoder(carcinonet_file, tiles):
    net, path = carcinonet_file
    extractor = build_extractor("carcinonet_toy", path)
    with torch.no_grad():
        assert torch.allclose(extractor(tiles), net.encode(tiles), atol=1e-5)
    assert extractor.num_features == net.num_features == 256


def _tile_bags(root, n_slides: int = 5, size: int = 16) -> list[dict]:
    rng = np.random.default_rng(0)
    bags = []
    for s in range(n_slides):
        folder = root / f"slide{s}"
        folder.mkdir(parents=True)
        paths = []
        for t in range(2 + s):
            path = folder / f"{t}.png"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
        label = np.zeros(4, np.float32)
        label[s % 4] = 1
        bags.append(
            {"slide_id": f"slide{s}", "tiles": paths, "label": label, "source": "real" if s % 2 else "synthetic"}
        )
    return bags


def test_cached_features_match_the_extractor_and_resume_skips_done_slides(tmp_path, carcinonet_file):
    bags = _tile_bags(tmp_path / "tiles")
    extractor = build_extractor("carcinonet_toy", carcinonet_file[1])
    out = tmp_path / "features"
    manifest = extract_bag_features(bags, extractor, out, batch_size=3, progress=False, dtype=torch.float32)
    load = tile_loader()
    for bag, entry in zip(bags, manifest):
        stored = torch.load(entry["features"], weights_only=True)
        with torch.no_grad():
            expected = extractor(torch.stack([load(p) for p in bag["tiles"]]))
        assert stored["features"].shape == (len(bag["tiles"]), 256)
        assert torch.allclose(stored["features"], expected, atol=1e-5)  # batches spanning slides change nothing
        assert stored["label"].tolist() == bag["label"].tolist() and stored["source"] == bag["source"]

    # a finished slide is never rewritten; a missing one is redone identically
    kept, redone = out / "slide1.pt", out / "slide3.pt"
    sentinel = {**torch.load(kept, weights_only=True), "features": torch.zeros(3, 256)}
    torch.save(sentinel, kept)
    before = os.stat(kept).st_mtime_ns
    original = torch.load(redone, weights_only=True)["features"]
    redone.unlink()
    (out / "manifest.csv").unlink()
    extract_bag_features(bags, extractor, out, batch_size=3, progress=False, dtype=torch.float32)
    assert os.stat(kept).st_mtime_ns == before
    assert torch.equal(torch.load(kept, weights_only=True)["features"], torch.zeros(3, 256))
    assert torch.allclose(torch.load(redone, weights_only=True)["features"], original, atol=1e-6)
    assert (out / "manifest.csv").is_file()


def test_rank_shards_cover_every_slide_once_and_the_last_writes_the_manifest(tmp_path, carcinonet_file):
    bags = _tile_bags(tmp_path / "tiles", n_slides=7)
    extractor = build_extractor("carcinonet_toy", carcinonet_file[1])
    out = tmp_path / "features"
    seen: list[set[str]] = []
    for rank in range(3):
        before = {p.stem for p in out.glob("*.pt")}
        extract_bag_features(bags, extractor, out, batch_size=4, rank=rank, world_size=3, progress=False)
        seen.append({p.stem for p in out.glob("*.pt")} - before)
        assert (out / "manifest.csv").is_file() == (rank == 2)
    assert seen == [{"slide0", "slide3", "slide6"}, {"slide1", "slide4"}, {"slide2", "slide5"}]
    data = FeatureBagDataset(out)
    assert [data[i]["slide_id"] for i in range(len(data))] == [b["slide_id"] for b in bags]
    sample = data[6]
    assert sample["features"].dtype == torch.float32 and sample["features"].shape == (8, 256)
    assert sample["label"].tolist() == [0.0, 0.0, 1.0, 0.0] and sample["source"] == "synthetic"
    assert torch.load(out / "slide6.pt", weights_only=True)["features"].dtype == torch.float16  # the default storage


def test_cache_refuses_a_second_extractor_and_bad_bags(tmp_path, carcinonet_file):
    bags = _tile_bags(tmp_path / "tiles", n_slides=2)
    out = tmp_path / "features"
    extract_bag_features(bags, build_extractor("carcinonet_toy", carcinonet_file[1]), out, progress=False)
    resnet = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), resnet)
    with pytest.raises(
        ValueError, match=r"other settings \(extractor: \"carcinonet_toy\" -> \"resnet18\"; .*weights: "
    ):
        extract_bag_features(bags, build_extractor("resnet18", resnet), out, progress=False)
    with pytest.raises(ValueError, match="twice"):
        extract_bag_features([bags[0], bags[0]], build_extractor("carcinonet_toy", carcinonet_file[1]), out)
    with pytest.raises(ValueError, match="plain file name"):
        extract_bag_features(
            [{**bags[0], "slide_id": "a/b"}], build_extractor("carcinonet_toy", carcinonet_file[1]), out
        )


def test_feature_bag_dataset_takes_files_and_tensors(tmp_path):
    path = tmp_path / "s.pt"
    torch.save({"features": torch.ones(3, 5, dtype=torch.float16), "label": torch.tensor([0, 1, 1, 0.0])}, path)
    data = FeatureBagDataset([path, {"features": torch.zeros(2, 5), "label": [1, 0, 0, 0], "slide_id": "t"}])
    assert data[0]["features"].dtype == torch.float32 and data[0]["slide_id"] == "s"
    assert data[0]["label"].tolist() == [0, 1, 1, 0] and data[1]["features"].shape == (2, 5)
    assert data.num_features == 5
    with pytest.raises(FileNotFoundError, match="manifest.csv"):
        FeatureBagDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="gone.pt"):
        FeatureBagDataset([tmp_path / "gone.pt"])
