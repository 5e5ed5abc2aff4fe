"""The four generators of the paper by name (SD, SD-SC, SD-DISC, SD-DISC-CoTrain), from the bundles' weights.

SD-SC samples the SD weights with separated conditions; SD-DISC and SD-DISC-CoTrain are the plain sampler
with fine-tuned denoiser weights. Every door (CLI, demo, comparison) builds generators here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from monai_disc.generate_slides import LDMGenerator
from monai_disc.inferers import MaskLDMSampler, SeparatedConditionInferer
from monai_disc.networks import mask_ldm_toy, vq_f4_toy

__all__ = ["GENERATORS", "load_weights", "load_generator"]

# name -> (display name, denoiser weights relative to the bundles folder, separated conditions)
GENERATORS: dict[str, tuple[str, str, bool]] = {
    "sd": ("SD", "gleason_ldm/models/model.pt", False),
    "sc": ("SD-SC", "gleason_ldm/models/model.pt", True),
    "disc": ("SD-DISC", "gleason_ldm_disc/models/model_disc.pt", False),
    "cotrain": ("SD-DISC-CoTrain", "gleason_ldm_disc/models/model_cotrain.pt", False),
}


def load_weights(network: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a state dict (weights_only) into `network`, in eval mode; the error names a missing file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights {path} not found: train them with the bundle (see its docs/README.md)")
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network.eval()


def load_generator(
    name: str,
    bundles: str | Path,
    steps: int = 50,
    device: str | torch.device = "cpu",
    guidance_scale: float = 1.0,
    **sampler_options: Any,
) -> LDMGenerator:
    """A toy-sized generator by name ("sd", "sc", "disc", "cotrain") with the weights shipped in `bundles`.

    ``guidance_scale`` is the classifier-free guidance weight (1: plain conditional sampling, the paper's).
    ``sampler_options`` go to :class:`MaskLDMSampler` (speed: ``dtype``, ``channels_last``, ``compile``,
    ``compile_options``, ``decode_batch_size``); the default precision is bf16 on CUDA and fp32 on a CPU.

    Raises:
        ValueError: for an unknown name.
        FileNotFoundError: when its weights are missing.
    """
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose one of {sorted(GENERATORS)}")
    display, weights, separated = GENERATORS[name]
    bundles = Path(bundles)
    autoencoder = load_weights(vq_f4_toy(), bundles / "gleason_ldm" / "models" / "autoencoder.pt").to(device)
    denoiser = load_weights(mask_ldm_toy(), bundles / weights).to(device)
    sampler = MaskLDMSampler(
        num_inference_steps=steps, guidance_scale=guidance_scale, progress=False, **sampler_options
    )
    if separated:
        sampler = SeparatedConditionInferer(sampler)
    return LDMGenerator(sampler, autoencoder, denoiser, name=display)
