"""Regions of any size: one window is the window sampler, batches do not matter, slides open in OpenSlide and
a killed generation resumes. Runs the shipped toy networks (64 px windows, 16 x 16 latents) with few steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import torch
from PIL import Image

from monai_disc.apps.generate_region import check_slide_mask, generate_region, mask_path_for
from monai_disc.inferers import RegionSampler, load_generator, window_starts
from monai_disc.masks import BACKGROUND, labels_to_radboud, load_slide_mask
from monai_disc.visualize import to_uint8

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


@pytest.fixture(scope="module")
def sd():
    return load_generator("sd", BUNDLES, num_inference_steps=4)


def _mask(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (1, 1, max(1, h // 32), max(1, w // 32)), generator=g).float()
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")[0, 0].long()


def _slide_mask(h: int, w: int) -> np.ndarray:
    m = np.full((h, w), BACKGROUND, dtype=np.uint8)
    m[16 : h - 16, 8 : w - 40] = 0
    m[32 : h - 32, 40 : w // 2] = 2
    m[24 : h - 24, w // 2 : w - 48] = 3
    return m


def test_window_starts_cover_the_extent_with_whole_windows():
    assert window_starts(40, 16, 8) == [0, 8, 16, 24]
    assert window_starts(16, 16, 8) == [0]
    shifted = window_starts(40, 16, 16, offset=5)
    assert shifted[0] == 0 and shifted[-1] == 24 and all(s + 16 <= 40 for s in shifted)
    covered = np.zeros(40, bool)
    for s in shifted:
        covered[s : s + 16] = True
    assert covered.all()


@pytest.mark.parametrize("name,guidance", [("sd", 1.0), ("sd", 3.0), ("sc", 1.0)])
def test_a_one_window_region_is_the_window_samplers_tile(name, guidance):
    gen = load_generator(name, BUNDLES, num_inference_steps=4, guidance_scale=guidance)
    mask = _mask(64, 64, seed=3)
    tile = gen.sampler.sample(mask[None], gen.autoencoder, gen.denoiser, seeds=[11])[0]
    for mode in ("average", "shift"):
        region = RegionSampler(gen.sampler, mode=mode).sample(mask, gen.autoencoder, gen.denoiser, seed=11)
        assert region.shape == (64, 64, 3)
        np.testing.assert_array_equal(region, to_uint8(tile))


@pytest.mark.parametrize("name,mode", [("sd", "average"), ("sd", "shift"), ("sc", "average")])
def test_the_region_does_not_depend_on_the_window_batch_size(name, mode):
    gen = load_generator(name, BUNDLES, num_inference_steps=3)
    mask = _mask(96, 160, seed=1)
    latents = [
        RegionSampler(gen.sampler, mode=mode, window_batch_size=b).sample_latent(
            mask, gen.autoencoder, gen.denoiser, seed=5
        )
        for b in (1, 7, 64)
    ]
    assert latents[0].shape == (3, 24, 40)
    for other in latents[1:]:
        torch.testing.assert_close(other, latents[0], atol=1e-4, rtol=0)
    another_seed = RegionSampler(gen.sampler, mode=mode).sample_latent(mask, gen.autoencoder, gen.denoiser, seed=6)
    assert (another_seed - latents[0]).abs().mean() > 0.1


def test_shift_mode_moves_the_window_grid_every_step(sd):
    region = RegionSampler(sd.sampler, mode="shift", overlap=0)
    grids = {tuple(region.positions((40, 56), step, seed=2)) for step in range(6)}
    assert len(grids) > 1
    assert region.positions((40, 56), 3, seed=2) == region.positions((40, 56), 3, seed=2)
    fixed = RegionSampler(sd.sampler, mode="average")
    assert len({tuple(fixed.positions((40, 56), step, seed=2)) for step in range(6)}) == 1


def test_windows_of_glass_are_not_denoised(sd):
    mask = _mask(64, 192, seed=2)
    glass = mask.clone()
    glass[:, 60:] = BACKGROUND
    calls = []
    hook = sd.denoiser.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        region = RegionSampler(sd.sampler, window_batch_size=64)
        region.sample_latent(glass, sd.autoencoder, sd.denoiser, seed=0, background=BACKGROUND)
        with_glass = sum(calls)
        calls.clear()
        region.sample_latent(mask, sd.autoencoder, sd.denoiser, seed=0)
        everywhere = sum(calls)
    finally:
        hook.remove()
    # latent 16 x 48, windows at x = 0, 12, 24, 32: tissue (x < 15) reaches the windows at 0 and 12 only; one call
    # per entry of the solver's grid (PLMS, 4 steps: 5 evaluations)
    evaluations = region.num_evaluations
    assert evaluations == 5 and everywhere == 4 * evaluations and with_glass == 2 * evaluations


def test_background_pixels_are_conditioned_as_nc_and_other_values_are_refused(sd):
    mask = _mask(64, 128, seed=5)
    specks = mask.clone()
    specks[::7, ::5] = BACKGROUND  # glass specks: every window keeps tissue, so every window runs
    region = RegionSampler(sd.sampler)
    with_glass = region.sample_latent(specks, sd.autoencoder, sd.denoiser, seed=1, background=BACKGROUND)
    as_nc = region.sample_latent(specks.masked_fill(specks == BACKGROUND, 0), sd.autoencoder, sd.denoiser, seed=1)
    torch.testing.assert_close(with_glass, as_nc, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"labels 0\.\.3, got \[255\]"):
        region.sample_latent(specks, sd.autoencoder, sd.denoiser, seed=1)
    with pytest.raises(ValueError, match=r"background must lie in 4\.\.255"):
        region.sample_latent(mask, sd.autoencoder, sd.denoiser, seed=1, background=2)


def test_decoding_in_bands_is_blended_and_resumes_at_any_band(sd):
    region = RegionSampler(sd.sampler, decode_window=16, decode_overlap=8)
    latent = region.sample_latent(_mask(128, 128), sd.autoencoder, sd.denoiser, seed=1)
    bands = list(region.decode_bands(latent, sd.autoencoder))
    assert [b[0] for b in bands] == [0, 1, 2] and bands[0][1] == 0 and bands[-1][2] == 128
    image = np.concatenate([b[3] for b in bands])
    assert image.shape == (128, 128, 3)
    resumed = list(region.decode_bands(latent, sd.autoencoder, start_band=2))
    assert [b[0] for b in resumed] == [2]
    np.testing.assert_array_equal(resumed[0][3], bands[2][3])
    # the blend leaves no step where chunks meet: the jump across a chunk border is like any other column's
    cols = np.abs(np.diff(image.astype(np.float32), axis=1)).mean(axis=(0, 2))
    assert cols[[63, 95]].max() < 2.0 * np.median(cols)


def _read_level(path: Path, level: int) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as slide:
        size = slide.level_dimensions[level]
        return np.asarray(slide.read_region((0, 0), level, size))[..., :3]


def test_openslide_opens_the_region_and_its_mask_with_size_levels_and_mpp(sd, tmp_path):
    mask = _slide_mask(128, 320)
    out = generate_region(mask, tmp_path / "slide.tiff", sd, seed=3, mpp=0.5, progress=False)
    for path in (out, mask_path_for(out)):
        with openslide.OpenSlide(str(path)) as slide:
            assert slide.dimensions == (320, 128)
            assert slide.level_dimensions == ((320, 128), (160, 64))
            assert slide.level_downsamples == pytest.approx((1.0, 2.0))
            assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
            assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
    rgb, radboud = _read_level(out, 0), _read_level(mask_path_for(out), 0)[..., 0]
    np.testing.assert_array_equal(radboud, labels_to_radboud(mask))
    assert set(np.unique(radboud)) == {0, 1, 4, 5}
    glass = mask == BACKGROUND
    assert (rgb[glass] == 255).all()
    assert rgb[~glass].mean() < 230  # tissue is drawn, not glass
    assert not list(tmp_path.glob(".*partial*"))


def _crash_after(module: torch.nn.Module, calls: int):
    count = [0]

    def hook(*_):
        count[0] += 1
        if count[0] > calls:
            raise RuntimeError("killed")

    return module.register_forward_hook(hook), count


@pytest.mark.parametrize("stage", ["sampling", "decoding"])
def test_a_killed_generation_resumes_and_writes_the_same_slide(sd, tmp_path, stage):
    mask = _slide_mask(128, 192)
    region = RegionSampler(sd.sampler, window_batch_size=64, decode_window=16, decode_overlap=4)
    whole = generate_region(mask, tmp_path / "whole.tiff", sd, seed=4, region=region, progress=False)
    target = tmp_path / "killed.tiff"
    module = sd.denoiser if stage == "sampling" else sd.autoencoder.decoder
    handle, _ = _crash_after(module, 2)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            generate_region(mask, target, sd, seed=4, region=region, checkpoint_seconds=0, progress=False)
    finally:
        handle.remove()
    partial = tmp_path / ".killed.tiff.partial"
    assert not target.exists() and (partial / "latent.pt").is_file()
    step = torch.load(partial / "latent.pt", weights_only=True)["step"]
    evaluations = region.num_evaluations  # the default solver (PLMS) keeps a history: it is saved with the latent
    assert step == (2 if stage == "sampling" else evaluations)
    counter, count = _crash_after(sd.denoiser, 10**9)
    try:
        generate_region(mask, target, sd, seed=4, region=region, checkpoint_seconds=0, progress=False)
    finally:
        counter.remove()
    assert count[0] == (evaluations - 2 if stage == "sampling" else 0)  # only the steps not saved were run again
    np.testing.assert_array_equal(_read_level(target, 0), _read_level(whole, 0))
    assert not partial.exists()


def test_a_partial_folder_from_other_settings_is_not_reused(sd, tmp_path):
    mask = _slide_mask(64, 128)
    handle, _ = _crash_after(sd.denoiser, 1)
    try:
        with pytest.raises(RuntimeError):
            generate_region(mask, tmp_path / "s.tiff", sd, seed=1, checkpoint_seconds=0, progress=False)
    finally:
        handle.remove()
    fresh = generate_region(mask, tmp_path / "fresh.tiff", sd, seed=2, progress=False)
    other = generate_region(mask, tmp_path / "s.tiff", sd, seed=2, progress=False)  # same folder, other seed
    np.testing.assert_array_equal(_read_level(other, 0), _read_level(fresh, 0))


def test_bad_masks_are_refused_naming_the_file(sd, tmp_path):
    bad_values = tmp_path / "bad_values.png"
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(bad_values)
    with pytest.raises(ValueError, match=r"bad_values\.png.*\[7\]"):
        load_slide_mask(bad_values)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(rgb)
    with pytest.raises(ValueError, match=r"rgb\.png.*one-channel"):
        load_slide_mask(rgb)
    region = RegionSampler(sd.sampler)
    with pytest.raises(ValueError, match=r"odd\.png.*66x130.*multiple of .* factor 4"):
        check_slide_mask(np.zeros((66, 130), np.uint8), region, 4, "odd.png")
    with pytest.raises(ValueError, match=r"small\.png.*smaller than one window \(64 px\)"):
        check_slide_mask(np.zeros((32, 128), np.uint8), region, 4, "small.png")
    with pytest.raises(ValueError, match=r"glass\.png.*no tissue"):
        check_slide_mask(np.full((64, 64), BACKGROUND, np.uint8), region, 4, "glass.png")


def test_a_radboud_mask_tiff_is_read_at_the_chosen_level(tmp_path):
    from monai_disc.data import write_pyramid_tiff

    radboud = np.zeros((256, 512), np.uint8)
    radboud[32:224, 32:480] = 1
    radboud[64:192, 64:192] = 2
    radboud[64:192, 192:320] = 3
    radboud[64:192, 320:448] = 5
    rgb = np.zeros((256, 512, 3), np.uint8)
    rgb[..., 0] = radboud
    path = write_pyramid_tiff(tmp_path / "x_mask.tiff", rgb, mpp=0.5, nearest=True)
    full, half = load_slide_mask(path, level=0), load_slide_mask(path, level=1)
    assert full.shape == (256, 512) and half.shape == (128, 256)
    expected = np.array([BACKGROUND, 0, 0, 1, 2, 3])[radboud]
    np.testing.assert_array_equal(full, expected)
    assert set(np.unique(half)) == {0, 1, 3, BACKGROUND}
    with pytest.raises(ValueError, match=r"x_mask\.tiff.*level 5"):
        load_slide_mask(path, level=5)
    bad = rgb.copy()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"nine\.tiff.*\[9\]"):
        load_slide_mask(write_pyramid_tiff(tmp_path / "nine.tiff", bad, mpp=0.5, nearest=True))


def test_ramp_weights_beside_glass_are_normalised_not_shrunk():
    """A window whose neighbours are skipped (glass) keeps its whole prediction on its ramped border columns."""
    gen = load_generator("sd", BUNDLES, num_inference_steps=2)
    mask = _mask(64, 128, seed=4)
    mask[:, 40:] = BACKGROUND  # tissue in latent columns 0..9: of the windows at x = 0, 12, 16 only the first
    ramp, plain = (
        RegionSampler(gen.sampler, overlap=4, blend=blend).sample_latent(
            mask, gen.autoencoder, gen.denoiser, seed=2, background=BACKGROUND
        )
        for blend in ("ramp", "uniform")
    )
    torch.testing.assert_close(ramp[:, :, :16], plain[:, :, :16], atol=1e-5, rtol=0)


def test_regions_run_in_the_window_samplers_precision_and_layout():
    # the GPU path (bf16 autocast, channels-last weights), exercised on the CPU: every window evaluation runs in
    # bfloat16, the solver steps the float32 latent, and the region stays near the float32 one
    fast = load_generator("sd", BUNDLES, num_inference_steps=3, dtype="bf16", channels_last=True)
    plain = load_generator("sd", BUNDLES, num_inference_steps=3)
    mask = _mask(64, 128, seed=1)
    dtypes = []
    hook = fast.denoiser.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    try:
        low = RegionSampler(fast.sampler).sample_latent(mask, fast.autoencoder, fast.denoiser, seed=0)
    finally:
        hook.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16} and low.dtype == torch.float32
    assert fast.denoiser.unet.conv_in.conv.weight.is_contiguous(memory_format=torch.channels_last)
    full = RegionSampler(plain.sampler).sample_latent(mask, plain.autoencoder, plain.denoiser, seed=0)
    difference = (low - full).abs().mean() / full.abs().mean()
    assert 0 < difference < 0.05


@pytest.mark.parametrize("solver", ["dpm++2m", "unipc"])
def test_diffusers_solvers_draw_tiles_and_regions_and_resume_from_their_history(solver, tmp_path):
    gen = load_generator("sd", BUNDLES, solver=solver, num_inference_steps=3)
    mask = _mask(64, 64, seed=3)
    counter, count = _crash_after(gen.denoiser, 10**9)
    try:
        tile = gen.sampler.sample(mask[None], gen.autoencoder, gen.denoiser, seeds=[11])[0]
    finally:
        counter.remove()
    assert count[0] == 3  # one network evaluation per step
    region = RegionSampler(gen.sampler, window_batch_size=64, decode_window=16, decode_overlap=4)
    assert region.num_evaluations == 3
    np.testing.assert_array_equal(region.sample(mask, gen.autoencoder, gen.denoiser, seed=11), to_uint8(tile))
    slide = _slide_mask(128, 192)
    whole = generate_region(slide, tmp_path / "whole.tiff", gen, seed=4, region=region, progress=False)
    target = tmp_path / "killed.tiff"
    handle, _ = _crash_after(gen.denoiser, 2)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            generate_region(slide, target, gen, seed=4, region=region, checkpoint_seconds=0, progress=False)
    finally:
        handle.remove()
    saved = torch.load(tmp_path / ".killed.tiff.partial" / "latent.pt", weights_only=True)
    assert saved["step"] == 2 and saved["solver"]["_step_index"] == 2  # the history is saved with the latent
    counter, count = _crash_after(gen.denoiser, 10**9)
    try:
        generate_region(slide, target, gen, seed=4, region=region, checkpoint_seconds=0, progress=False)
    finally:
        counter.remove()
    assert count[0] == 1  # the last step only
    np.testing.assert_array_equal(_read_level(target, 0), _read_level(whole, 0))
