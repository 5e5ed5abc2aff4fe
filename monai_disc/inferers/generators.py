"""The generators by name (SD, SD-SC, SD-DISC, SD-DISC-CoTrain, SD-GD, ...): the one factory every door uses.

A generator is a sampler with its networks that turns Gleason masks and noise seeds into tiles
(:class:`TileGenerator`). SD-SC samples the SD weights with separated conditions; SD-DISC, SD-DISC-CoTrain and
SD-GD (classifier-free guidance distilled, :class:`monai_disc.engines.GuidanceDistillPrepareBatch`) are the plain
sampler with fine-tuned denoiser weights. Each :data:`GENERATORS` entry carries its weights and
its sampler options, so a variant (another fusion step, other weights) is one more entry; the CLI's choices,
the demo, the comparison, slide generation and the bundles' docs all read this registry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from monai_disc.bundles import AUTOENCODER_WEIGHTS, bundle_file
from monai_disc.inferers.mask_ldm import DEFAULT_NUM_INFERENCE_STEPS, MaskLDMSampler, tile_size_multiple
from monai_disc.inferers.separated import SeparatedConditionInferer
from monai_disc.networks import mask_ldm_toy, vq_f4_toy
from monai_disc.networks.weights import load_weights

__all__ = ["DEFAULT_GENERATOR", "GENERATORS", "GeneratorEntry", "LDMGenerator", "TileGenerator", "load_generator"]


@dataclass(frozen=True)
class GeneratorEntry:
    """One named generator.

    Args:
        display: the name in tables, pictures and manifests ("SD-SC").
        weights: denoiser weights, relative to the bundles folder.
        separated: sample with separated conditions (:class:`SeparatedConditionInferer`).
        options: sampler options of this entry (``fuse_step`` for SC; any :class:`MaskLDMSampler` argument);
            :func:`load_generator`'s keyword arguments override them.
    """

    display: str
    weights: str
    separated: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


GENERATORS: dict[str, GeneratorEntry] = {
    "sd": GeneratorEntry("SD", "gleason_ldm/models/model.pt"),
    "sc": GeneratorEntry("SD-SC", "gleason_ldm/models/model.pt", separated=True),
    "disc": GeneratorEntry("SD-DISC", "gleason_ldm_disc/models/model_disc.pt"),
    "cotrain": GeneratorEntry("SD-DISC-CoTrain", "gleason_ldm_disc/models/model_cotrain.pt"),
    "gd": GeneratorEntry("SD-GD", "gleason_ldm/models/model_gd.pt"),
}
#: the generator a door uses when none is named (slide and region generation, the demo, the MONAI Label model):
#: the one that follows its masks best at plain SD's cost (docs/generators.md, "Guidance distilled: SD-GD")
DEFAULT_GENERATOR = "gd"


@runtime_checkable
class TileGenerator(Protocol):
    """Masks and noise seeds in, tiles in [-1, 1] out; what slide generation and the comparison draw with.

    Implementations must make tile `i` a function of (`masks[i]`, `seeds[i]`) only. An optional `name`
    attribute is recorded in manifests and tables.
    """

    def sample(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        """Tiles (B, 3, H, W) float in [-1, 1] for integer label maps `masks` (B, H, W), one seed per mask."""
        ...


class LDMGenerator:
    """A latent-diffusion sampler with its networks, as a :class:`TileGenerator`.

    Fits any sampler called as ``sampler.sample(masks, autoencoder, denoiser, seeds=seeds)``: MONAI-style
    samplers hold the schedule and take the networks as arguments (SD: :class:`MaskLDMSampler`; SD-SC:
    :class:`SeparatedConditionInferer`). The networks are put in eval mode.

    Args:
        sampler: the sampling algorithm.
        autoencoder: the first stage that decodes latents.
        denoiser: the mask-conditioned noise predictor.
        name: the generator's display name, e.g. "SD", "SD-SC", "SD-DISC", "SD-DISC-CoTrain".
    """

    def __init__(self, sampler: Any, autoencoder: nn.Module, denoiser: nn.Module, name: str = "SD") -> None:
        if not callable(getattr(sampler, "sample", None)):
            raise TypeError(
                f"sampler must have a sample(masks, autoencoder, denoiser, seeds=...) method, got {sampler!r}"
            )
        self.sampler = sampler
        self.autoencoder = autoencoder.eval()
        self.denoiser = denoiser.eval()
        self.name = str(name)

    @property
    def ldm_sampler(self) -> MaskLDMSampler:
        """The DDIM sampler doing the steps (the SC inferer's inner sampler): its step count and guidance."""
        return getattr(self.sampler, "sampler", self.sampler)

    @property
    def size_multiple(self) -> int:
        """Tile sides must be a positive multiple of this: the autoencoder's factor times the denoiser's."""
        return tile_size_multiple(self.autoencoder, self.denoiser)

    def check_size(self, size: int) -> None:
        """Refuse a tile size the networks cannot draw, naming the minimum.

        Raises:
            ValueError: ``size`` is not a positive multiple of :attr:`size_multiple`.
        """
        step = self.size_multiple
        if int(size) < step or int(size) % step:
            raise ValueError(
                f"tile size {size} px: generator {self.name} draws tiles whose side is a multiple of {step} px "
                f"(at least {step} px)"
            )

    @torch.no_grad()
    def sample(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        """Tiles (B, 3, H, W) in [-1, 1] on the CPU, for label maps (B, H, W) and one seed per mask."""
        tiles = self.sampler.sample(masks, self.autoencoder, self.denoiser, seeds=list(seeds))
        return tiles.detach().float().cpu()


def load_generator(
    name: str,
    bundles_dir: str | os.PathLike | None = None,
    *,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = 1.0,
    device: str | torch.device = "cpu",
    **sampler_options: Any,
) -> LDMGenerator:
    """A toy-sized generator by name (a key of :data:`GENERATORS`) with the weights shipped in the bundles.

    Args:
        name: "sd", "sc", "disc", "cotrain", ...
        bundles_dir: folder holding the bundles; None: the source checkout's ``bundles/``.
        num_inference_steps: DDIM steps per tile.
        guidance_scale: classifier-free guidance weight (1: plain conditional sampling, the paper's).
        device: where the networks run.
        sampler_options: override the entry's options: ``fuse_step`` (separated entries), or any other
            :class:`MaskLDMSampler` argument (``decode_batch_size``, ``progress``, ...).

    Raises:
        ValueError: for an unknown name, or ``fuse_step`` for an entry without separated conditions.
        FileNotFoundError: when its weights are missing.
    """
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose one of {sorted(GENERATORS)}")
    entry = GENERATORS[name]
    options = {"progress": False, **entry.options, **sampler_options}
    fuse_step = options.pop("fuse_step", None)
    if fuse_step is not None and not entry.separated:
        raise ValueError(f"fuse_step applies to separated-condition generators, not {name!r}")
    autoencoder = load_weights(vq_f4_toy(), bundle_file(AUTOENCODER_WEIGHTS, bundles_dir)).to(device)
    denoiser = load_weights(mask_ldm_toy(), bundle_file(entry.weights, bundles_dir)).to(device)
    sampler: Any = MaskLDMSampler(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **options)
    if entry.separated:
        sampler = SeparatedConditionInferer(sampler, fuse_step=fuse_step)
    return LDMGenerator(sampler, autoencoder, denoiser, name=entry.display)
