"""Solvers of the LDM schedule by name, the one adapter every sampler gets its scheduler from.

A solver is a MONAI scheduler on :data:`LDM_SCHEDULE` with ``set_timesteps(n)`` and ``step(eps, t, x)``: the
caller's loop is the same four lines for every solver, and a solver's history (PLMS keeps its last noise
predictions) lives in the scheduler and is reset by ``set_timesteps``. :data:`SOLVERS` names them,
:func:`make_scheduler` builds one from a name (a :class:`monai_disc.inferers.GeneratorEntry` option, a CLI flag, a
bundle key), and :data:`DEFAULT_SOLVER` with :data:`DEFAULT_NUM_INFERENCE_STEPS` is the one default sampler of
every door (the fewest network evaluations within seed noise of SD-GD at 50 DDIM steps, docs/generators.md).

- ``ddim``: MONAI's DDIM (its linspace grid), stateless: windows of its grid (SD-SC's ``fuse_step``) and
  band-wise steps (regions) are exact. ``ddim-leading`` / ``ddim-trailing``: the CompVis / diffusers grids, whose
  steps land on the next grid point; ``ddim-middle``: one step from t = 501 (a 1-step student's grid).
- ``plms``: PLMS (pseudo linear multistep) with its second timestep repeated (:class:`PLMSScheduler`). MONAI's
  ``PNDMScheduler(skip_prk_steps=True)`` spends its second network call re-doing the first step (a Heun
  correction) but does not repeat that timestep in its grid, so from the third call on the network is told a
  timestep one grid step below the sample's noise level, and the loop stops one step short of t = 0.
  :class:`PLMSScheduler` repeats the timestep, as the CompVis/diffusers PLMS samplers do (n + 1 calls for n
  steps); it keeps its last four noise predictions between steps, so a sampling runs its whole grid in one loop.

DPM-Solver++ and UniPC are not in MONAI; they are not registered here (see docs/generators.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.networks.schedulers import DDIMScheduler, PNDMScheduler, Scheduler

__all__ = [
    "DEFAULT_NUM_INFERENCE_STEPS",
    "DEFAULT_SOLVER",
    "LDM_SCHEDULE",
    "PLMSScheduler",
    "SOLVERS",
    "SpacedDDIMScheduler",
    "ddim_scheduler",
    "is_stateless",
    "load_solver_state",
    "make_scheduler",
    "plms_scheduler",
    "solver_state",
]

# The noise schedule of CompVis LDM (its "linear" schedule is MONAI's "scaled_linear_beta": betas linear in sqrt
# space from 0.0015 to 0.0195 over 1000 steps). Training (DDPMScheduler(**LDM_SCHEDULE)) and sampling must share it.
LDM_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.0015,
    "beta_end": 0.0195,
}

#: the solver of every door when none is named: PLMS with the repeated timestep (:func:`plms_scheduler`)
DEFAULT_SOLVER = "plms"
#: solver steps per tile when none are named. With :data:`DEFAULT_SOLVER` 3 steps are 4 network evaluations: on the
#: comparison's 64 masks SD-GD reads mIoU 0.699 / FID 1.07 against 0.670 / 1.17 at 50 DDIM steps, and 0.679 / 0.674
#: on two more seed sets (DDIM 50: 0.638 / 0.655), 12x less work (docs/generators.md, "Evaluations per tile").
DEFAULT_NUM_INFERENCE_STEPS = 3

DDIM_SPACINGS: tuple[str, ...] = ("linspace", "leading", "trailing", "middle")


class SpacedDDIMScheduler(DDIMScheduler):
    """MONAI's DDIM with a chosen timestep grid.

    MONAI spaces its grid by ``(T - 1 - offset) / (n - 1)`` (``"linspace"``) but steps back by ``T // n``, so the
    step from one grid point lands beside the next. ``"leading"`` (CompVis: ``offset + k T // n``) and
    ``"trailing"`` (``T - 1 - k T // n``, from the noisiest timestep) are grids whose steps land on the next point.
    ``"middle"`` is one step from the middle of the schedule (``T // 2 + offset``) to the end: the first step of the
    2-step leading grid taken straight to t = 0, a better-conditioned single step for a distilled student than
    one from ``T - 1`` (whose noise prediction is amplified ``1 / sqrt(alpha-bar)``, about 15x, into the latent).

    Args:
        timestep_spacing: ``"linspace"``, ``"leading"`` or ``"trailing"``.
        kwargs: ``DDIMScheduler`` arguments.

    Raises:
        ValueError: for an unknown spacing.
    """

    def __init__(self, timestep_spacing: str = "linspace", **kwargs: Any) -> None:
        if timestep_spacing not in DDIM_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {DDIM_SPACINGS}, got {timestep_spacing!r}.")
        self.timestep_spacing = "linspace"  # MONAI's __init__ sets a grid of T steps
        super().__init__(**kwargs)
        self.timestep_spacing = timestep_spacing

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """The grid of ``num_inference_steps`` steps by :attr:`timestep_spacing`."""
        super().set_timesteps(num_inference_steps, device)  # checks, num_inference_steps, the linspace grid
        ratio = self.num_train_timesteps // num_inference_steps
        if self.timestep_spacing == "leading":
            grid = torch.arange(num_inference_steps - 1, -1, -1) * ratio + self.steps_offset
        elif self.timestep_spacing == "trailing":
            grid = torch.arange(self.num_train_timesteps, 0, -ratio)[:num_inference_steps] - 1
        elif self.timestep_spacing == "middle":
            if num_inference_steps != 1:
                raise ValueError(f"the 'middle' grid is one step, got num_inference_steps={num_inference_steps}.")
            grid = torch.tensor([self.num_train_timesteps // 2 + self.steps_offset])
        else:
            return
        self.timesteps = grid.long().to(device)


def ddim_scheduler(timestep_spacing: str = "linspace", **overrides: Any) -> DDIMScheduler:
    """MONAI's DDIM on :data:`LDM_SCHEDULE`, stepping as CompVis LDM does.

    No clipping of the predicted latent (latents are not bounded to [-1, 1]); ``steps_offset=1`` with
    ``set_alpha_to_one=False`` visits timesteps 999..1 and ends at alpha-bar of step 0, as the LDM and Stable
    Diffusion DDIM samplers do.

    Args:
        timestep_spacing: the grid (:class:`SpacedDDIMScheduler`); ``"linspace"`` is MONAI's own ``DDIMScheduler``.
        overrides: any ``DDIMScheduler`` argument.

    Returns:
        the scheduler.
    """
    cfg: dict[str, Any] = {**LDM_SCHEDULE, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
    cfg.update(overrides)
    if timestep_spacing == "linspace":
        return DDIMScheduler(**cfg)
    return SpacedDDIMScheduler(timestep_spacing, **cfg)


class PLMSScheduler(PNDMScheduler):
    """MONAI's PLMS with the second timestep repeated, so every network call sees the timestep of its sample.

    Args:
        kwargs: ``PNDMScheduler`` arguments other than ``skip_prk_steps`` (always True here).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("skip_prk_steps", None)
        super().__init__(skip_prk_steps=True, **kwargs)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """The grid ``t_{n-1}, t_{n-2}, t_{n-2}, ..., t_0`` (n + 1 entries) of n steps; resets the history.

        Args:
            num_inference_steps: n, the number of steps (the step ratio is 1000 // n).
            device: where the timesteps go.
        """
        super().set_timesteps(num_inference_steps, device)
        grid = self._timesteps  # ascending, from steps_offset
        if len(grid) > 1:
            plms = np.concatenate([grid[:-1], grid[-2:-1], grid[-1:]])[::-1].astype(np.int64)
            self.timesteps = torch.from_numpy(plms.copy()).to(device)
        self.num_inference_steps = int(num_inference_steps)  # the step ratio stays 1000 // n


def plms_scheduler(**overrides: Any) -> PLMSScheduler:
    """:class:`PLMSScheduler` on :data:`LDM_SCHEDULE`, stepping like :func:`ddim_scheduler` (``steps_offset=1``,
    final alpha-bar of step 0).

    Args:
        overrides: any ``PNDMScheduler`` argument.

    Returns:
        the scheduler.
    """
    cfg: dict[str, Any] = {**LDM_SCHEDULE, "set_alpha_to_one": False, "steps_offset": 1}
    cfg.update(overrides)
    return PLMSScheduler(**cfg)


#: solver name -> factory of its scheduler on :data:`LDM_SCHEDULE` (keyword arguments override the scheduler's)
SOLVERS: dict[str, Callable[..., Scheduler]] = {
    "ddim": ddim_scheduler,
    "ddim-leading": lambda **kw: ddim_scheduler("leading", **kw),
    "ddim-trailing": lambda **kw: ddim_scheduler("trailing", **kw),
    "ddim-middle": lambda **kw: ddim_scheduler("middle", **kw),
    "plms": plms_scheduler,
}


def make_scheduler(solver: str | Scheduler | None = None, **overrides: Any) -> Scheduler:
    """The scheduler of a solver named in :data:`SOLVERS` (the adapter every door goes through).

    Args:
        solver: a name of :data:`SOLVERS`, None for :data:`DEFAULT_SOLVER`, or a scheduler (returned as is).
        overrides: scheduler arguments (only with a name).

    Returns:
        a new scheduler (its history is its own).

    Raises:
        ValueError: for an unknown name.
    """
    if solver is None:
        solver = DEFAULT_SOLVER
    if not isinstance(solver, str):
        return solver
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}.")
    return SOLVERS[solver](**overrides)


def is_stateless(scheduler: Scheduler) -> bool:
    """Whether a scheduler's step depends on (model output, t, sample) alone (DDIM), so its grid may be run in
    windows and its latent stepped in pieces; a multistep solver (PLMS) keeps a history across steps."""
    return isinstance(scheduler, DDIMScheduler)


def solver_state(scheduler: Scheduler) -> dict[str, Any]:
    """A multistep solver's history (PLMS: its last noise predictions and where it is in its grid), as CPU tensors
    and ints that ``torch.save(..., weights_only)`` round-trips; empty for a stateless solver (DDIM).

    Args:
        scheduler: the solver after some steps.
    """
    if is_stateless(scheduler) or not isinstance(scheduler, PNDMScheduler):
        return {}
    return {
        "counter": int(scheduler.counter),
        "ets": [e.detach().cpu() for e in scheduler.ets],
        "cur_sample": scheduler.cur_sample.detach().cpu(),
    }


def load_solver_state(scheduler: Scheduler, state: dict[str, Any], device: str | torch.device | None = None) -> None:
    """Give a solver (after ``set_timesteps``) the history :func:`solver_state` saved, on `device`.

    Raises:
        ValueError: for a history that does not belong to this kind of solver.
    """
    if not state:
        if not is_stateless(scheduler) and isinstance(scheduler, PNDMScheduler):
            raise ValueError(f"{type(scheduler).__name__} needs its saved history to resume; got none.")
        return
    if not isinstance(scheduler, PNDMScheduler) or set(state) != {"counter", "ets", "cur_sample"}:
        raise ValueError(f"solver history with keys {sorted(state)} does not fit {type(scheduler).__name__}.")
    scheduler.counter = int(state["counter"])
    scheduler.ets = [torch.as_tensor(e).to(device) for e in state["ets"]]
    scheduler.cur_sample = torch.as_tensor(state["cur_sample"]).to(device)
