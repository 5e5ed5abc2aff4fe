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
from monai_disc.inferers.mask_ldm import MaskLDMSampler, tile_size_multiple
from monai_disc.inferers.schedulers import DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_SOLVER, make_scheduler
from monai_disc.inferers.separated import SeparatedConditionInferer
from monai_disc.networks import mask_ldm_toy, vq_f4_toy
from monai_disc.networks.weights import load_weights

__all__ = [
    "DEFAULT_GENERATOR",
    "GENERATORS",
    "GeneratorEntry",
    "LDMGenerator",
    "TileGenerator",
    "entry_sampler",
    "load_generator",
    "sampler_options",
    "split_generator_spec",
]


@dataclass(frozen=True)
class GeneratorEntry:
    """One named generator.

    Args:
        display: the name in tables, pictures and manifests ("SD-SC").
        weights: denoiser weights, relative to the bundles folder.
        separated: sample with separated conditions (:class:`SeparatedConditionInferer`).
        options: sampler options of this entry: ``solver`` (a name of :data:`monai_disc.inferers.SOLVERS`) and
            ``num_inference_steps`` (both default to :data:`DEFAULT_SOLVER` and :data:`DEFAULT_NUM_INFERENCE_STEPS`),
            ``fuse_step`` for SC, any other :class:`MaskLDMSampler` argument; :func:`load_generator`'s keyword
            arguments override them.
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
    # SD-GD step-distilled to 2 evaluations (engines.SamplerDistillPrepareBatch, configs/train_gd2.yaml): its weights
    # were trained through this solver and step count, so it samples with them
    "gd2": GeneratorEntry(
        "SD-GD, 2-step student",
        "gleason_ldm/models/model_gd2.pt",
        options={"solver": "ddim-leading", "num_inference_steps": 2},
    ),
    # the same student in one evaluation: its second step (at t = 1) moves the latent little, so one DDIM step from
    # its first timestep (t = 501) straight to t = 0 reads the same (docs/generators.md, "Evaluations per tile")
    "gd1": GeneratorEntry(
        "SD-GD, 1-step student",
        "gleason_ldm/models/model_gd2.pt",
        options={"solver": "ddim-middle", "num_inference_steps": 1},
    ),
}
#: the generator a door uses when none is named (slide and region generation, the demo, the MONAI Label model, the
#: bundles): the one that follows its masks best at plain SD's cost (docs/generators.md, "Guidance distilled:
#: SD-GD"), sampled with the default solver (DEFAULT_SOLVER, DEFAULT_NUM_INFERENCE_STEPS: 4 network evaluations)
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


def split_generator_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """A generator named on a command line: ``NAME`` (its entry's own sampling) or ``NAME:SOLVER:STEPS``.

    Args:
        spec: the text, e.g. ``"gd"`` or ``"gd:ddim:50"``.

    Returns:
        (the generator name, the knobs the spec sets: ``{}`` or ``solver`` and ``num_inference_steps``), for
        :func:`sampler_options` / :func:`load_generator`.

    Raises:
        ValueError: a spec of another shape, or steps that are not a positive integer.
    """
    parts = str(spec).split(":")
    if len(parts) not in (1, 3) or not all(parts):
        raise ValueError(f"generator spec {spec!r}: expected NAME or NAME:SOLVER:STEPS (e.g. gd:ddim:50)")
    if len(parts) == 1:
        return parts[0], {}
    if not parts[2].isdigit() or int(parts[2]) < 1:
        raise ValueError(f"generator spec {spec!r}: steps must be a positive integer, got {parts[2]!r}")
    return parts[0], {"solver": parts[1], "num_inference_steps": int(parts[2])}


def sampler_options(
    name: str | None = None,
    *,
    num_inference_steps: int | None = None,
    solver: str | None = None,
    guidance_scale: float = 1.0,
    **options: Any,
) -> dict[str, Any]:
    """The sampler options of a registry entry with overrides: the one place a door's choices meet the defaults.

    Precedence: an argument that is not None, then the entry's :attr:`GeneratorEntry.options`, then
    :data:`DEFAULT_SOLVER` / :data:`DEFAULT_NUM_INFERENCE_STEPS`.

    Args:
        name: a key of :data:`GENERATORS`; None is :data:`DEFAULT_GENERATOR`.
        num_inference_steps: solver steps; None: the entry's.
        solver: a name of :data:`monai_disc.inferers.SOLVERS`; None: the entry's.
        guidance_scale: classifier-free guidance weight (1: plain sampling).
        options: any other :class:`MaskLDMSampler` argument, or ``fuse_step`` (separated entries).

    Returns:
        the :class:`MaskLDMSampler` keyword arguments (``scheduler`` a solver name) and ``fuse_step``.

    Raises:
        ValueError: for an unknown generator or solver, or ``fuse_step`` for an entry without separated conditions.
    """
    name = DEFAULT_GENERATOR if name is None else name
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose one of {sorted(GENERATORS)}")
    entry = GENERATORS[name]
    given = {"solver": solver, "num_inference_steps": num_inference_steps}
    merged = {"progress": False, **entry.options, **{k: v for k, v in given.items() if v is not None}, **options}
    merged.setdefault("solver", DEFAULT_SOLVER)
    merged.setdefault("num_inference_steps", DEFAULT_NUM_INFERENCE_STEPS)
    make_scheduler(merged["solver"])  # an unknown name fails here, naming the choices
    if merged.get("fuse_step") is not None and not entry.separated:
        raise ValueError(f"fuse_step applies to separated-condition generators, not {name!r}")
    merged["scheduler"] = merged.pop("solver")
    merged["num_inference_steps"] = int(merged["num_inference_steps"])
    merged["guidance_scale"] = float(guidance_scale)
    return merged


def entry_sampler(name: str | None = None, **overrides: Any) -> MaskLDMSampler | SeparatedConditionInferer:
    """The sampler of a registry entry (its solver, steps and options; SC entries wrapped in
    :class:`SeparatedConditionInferer`), without networks: what the bundles and regions sample with.

    Args:
        name: a key of :data:`GENERATORS`; None is :data:`DEFAULT_GENERATOR`.
        overrides: :func:`sampler_options`' keyword arguments.

    Raises:
        ValueError: as :func:`sampler_options`, or an inner ``fuse_step`` with a multistep solver.
    """
    name = DEFAULT_GENERATOR if name is None else name
    options = sampler_options(name, **overrides)
    fuse_step = options.pop("fuse_step", None)
    sampler: Any = MaskLDMSampler(**options)
    if GENERATORS[name].separated:
        sampler = SeparatedConditionInferer(sampler, fuse_step=fuse_step)
    return sampler


def load_generator(
    name: str | None = None,
    bundles_dir: str | os.PathLike | None = None,
    *,
    num_inference_steps: int | None = None,
    guidance_scale: float = 1.0,
    solver: str | None = None,
    device: str | torch.device = "cpu",
    **sampler_options: Any,
) -> LDMGenerator:
    """A toy-sized generator by name (a key of :data:`GENERATORS`) with the weights shipped in the bundles.

    Args:
        name: "sd", "sc", "disc", "cotrain", "gd", "gd2", ...; None is :data:`DEFAULT_GENERATOR`.
        bundles_dir: folder holding the bundles; None: the source checkout's ``bundles/``.
        num_inference_steps: solver steps per tile; None: the entry's (:data:`DEFAULT_NUM_INFERENCE_STEPS` unless
            the entry sets its own).
        guidance_scale: classifier-free guidance weight (1: plain conditional sampling, the paper's).
        solver: a name of :data:`monai_disc.inferers.SOLVERS`; None: the entry's (:data:`DEFAULT_SOLVER` unless
            the entry sets its own).
        device: where the networks run.
        sampler_options: override the entry's options: ``fuse_step`` (separated entries), or any other
            :class:`MaskLDMSampler` argument (``decode_batch_size``, ``progress``, ``dtype``, ...).

    Raises:
        ValueError: for an unknown name or solver, or ``fuse_step`` for an entry without separated conditions.
        FileNotFoundError: when its weights are missing.
    """
    name = DEFAULT_GENERATOR if name is None else name
    sampler = entry_sampler(
        name, num_inference_steps=num_inference_steps, solver=solver, guidance_scale=guidance_scale, **sampler_options
    )
    entry = GENERATORS[name]
    autoencoder = load_weights(vq_f4_toy(), bundle_file(AUTOENCODER_WEIGHTS, bundles_dir)).to(device)
    denoiser = load_weights(mask_ldm_toy(), bundle_file(entry.weights, bundles_dir)).to(device)
    return LDMGenerator(sampler, autoencoder, denoiser, name=entry.display)
