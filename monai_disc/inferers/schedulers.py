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

- ``dpm++2m`` / ``unipc``: DPM-Solver++ (2M) and UniPC (order 2, B(h) = ``bh2``), which MONAI does not ship,
  from diffusers behind :class:`DiffusersSolver` (the same ``set_timesteps`` / ``step`` as MONAI's); one step is one
  network evaluation. They keep their last predictions (and UniPC its last sample for the corrector) between steps:
  a region saves and resumes that history (:func:`solver_state`), SD-SC's inner ``fuse_step`` refuses them.

diffusers is imported when one of its solvers is built (it takes seconds to import); nothing is downloaded.
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
    "DiffusersSolver",
    "LDM_SCHEDULE",
    "MULTISTEP_OPTIONS",
    "PLMSScheduler",
    "SOLVERS",
    "Solver",
    "SpacedDDIMScheduler",
    "ddim_scheduler",
    "diffusers_scheduler",
    "dpm_solver_scheduler",
    "is_stateless",
    "load_solver_state",
    "make_scheduler",
    "plms_scheduler",
    "solver_state",
    "unipc_scheduler",
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


class DiffusersSolver:
    """A diffusers scheduler behind the interface of MONAI's: ``set_timesteps(n, device)``, ``timesteps`` and
    ``step(eps, t, x) -> (x_prev, x0)``.

    diffusers' ``step`` returns a ``SchedulerOutput``; this returns ``(prev_sample, pred_original_sample)`` as
    MONAI's schedulers do, where the predicted z_0 is the output's own (DDIM) or, for the multistep solvers, the
    data prediction they keep as their newest history entry. The history (:attr:`HISTORY`) lives in the wrapped
    scheduler and ``set_timesteps`` resets it, as in MONAI's PLMS.

    Args:
        scheduler: a diffusers scheduler predicting noise (``prediction_type="epsilon"``).
    """

    #: attributes of diffusers' multistep solvers that carry their history between steps: where the solver is in
    #: its grid, its last data predictions (UniPC: with their timesteps, its last sample for the corrector and, once
    #: it has stepped, its order)
    HISTORY: tuple[str, ...] = (
        "_step_index",
        "lower_order_nums",
        "model_outputs",
        "timestep_list",
        "last_sample",
        "this_order",
    )

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.num_inference_steps: int | None = None

    @property
    def timesteps(self) -> torch.Tensor:
        """The grid of the last ``set_timesteps``, noisiest first (one entry per network evaluation)."""
        return self.scheduler.timesteps

    @property
    def num_train_timesteps(self) -> int:
        """Steps of the training schedule."""
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha-bar of each training step."""
        return self.scheduler.alphas_cumprod

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """The grid of ``num_inference_steps`` steps; resets the history."""
        self.scheduler.set_timesteps(num_inference_steps, device)
        self.num_inference_steps = int(num_inference_steps)

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """One step from ``sample`` at ``timestep`` with the noise prediction ``model_output``.

        Returns:
            (the sample at the next grid point, the predicted z_0).
        """
        out = self.scheduler.step(model_output, timestep, sample)
        x0 = getattr(out, "pred_original_sample", None)
        if x0 is None and getattr(self.scheduler, "model_outputs", None):
            x0 = self.scheduler.model_outputs[-1]
        return out.prev_sample, x0

    def _history_keys(self) -> set[str]:
        """The attributes of :attr:`HISTORY` this solver holds now (none for a one-step solver such as DDIM)."""
        return (
            {k for k in self.HISTORY if hasattr(self.scheduler, k)}
            if hasattr(self.scheduler, "model_outputs")
            else set()
        )

    def state(self) -> dict[str, Any]:
        """The history after some steps, as CPU tensors, ints and None (empty for a solver without one)."""
        return {k: _to_cpu(getattr(self.scheduler, k)) for k in sorted(self._history_keys())}

    def load_state(self, state: dict[str, Any], device: str | torch.device | None = None) -> None:
        """Give the solver (after ``set_timesteps``) the history :meth:`state` saved, on `device`.

        Raises:
            ValueError: for a history of another kind of solver, or none where the solver keeps one.
        """
        need = self._history_keys() - {"this_order"}
        if not need <= set(state) <= need | {"this_order"}:
            name = type(self.scheduler).__name__
            raise ValueError(f"solver history with keys {sorted(state)} does not fit {name} (needs {sorted(need)}).")
        for key, value in state.items():
            setattr(self.scheduler, key, _to_device(value, device))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return int(value) if isinstance(value, (int, np.integer)) else value


def _to_device(value: Any, device: str | torch.device | None) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


#: a scheduler of :data:`SOLVERS`: MONAI's, or a diffusers solver behind :class:`DiffusersSolver`
Solver = Scheduler | DiffusersSolver


def diffusers_scheduler(name: str, **options: Any) -> DiffusersSolver:
    """A diffusers scheduler class `name` on :data:`LDM_SCHEDULE` (diffusers' ``"scaled_linear"`` betas are MONAI's
    ``"scaled_linear_beta"``), predicting noise, behind :class:`DiffusersSolver`.

    Args:
        name: a scheduler class of diffusers, e.g. ``"DPMSolverMultistepScheduler"``, ``"DDIMScheduler"``.
        options: its constructor's arguments.

    Returns:
        the adapted scheduler.
    """
    schedule = {**LDM_SCHEDULE}
    if schedule.pop("schedule") != "scaled_linear_beta":
        raise ValueError("LDM_SCHEDULE's betas have no diffusers name.")
    import diffusers  # here, not at the top: it takes seconds to import, and only these solvers need it

    cls = getattr(diffusers, name)
    return DiffusersSolver(cls(beta_schedule="scaled_linear", prediction_type="epsilon", **{**schedule, **options}))


#: diffusers settings shared by the multistep solvers here. ``"trailing"`` spaces the grid from t = 999 by T / n
#: (diffusers' advice for few steps; SD's ``"leading"`` would start 4 steps at t = 751, the start of MONAI's DDIM
#: grid is 999 too); ``final_sigmas_type="zero"`` ends at the predicted z_0 (diffusers' default, which SD's pipelines
#: keep; DDIM here ends at alpha-bar of step 0, sigma 0.04: at 1 and 2 steps, all first order, the two read alike to
#: the third decimal, docs/generators.md); ``lower_order_final`` takes first-order steps at the end of grids under
#: 15 steps (diffusers' default, stable at few steps).
MULTISTEP_OPTIONS: dict[str, Any] = {
    "solver_order": 2,
    "timestep_spacing": "trailing",
    "final_sigmas_type": "zero",
    "lower_order_final": True,
}


def dpm_solver_scheduler(**overrides: Any) -> DiffusersSolver:
    """DPM-Solver++ (2M): diffusers' ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``, order 2
    (the multistep data-prediction solver SD uses for guided sampling), and :data:`MULTISTEP_OPTIONS`.

    Args:
        overrides: any ``DPMSolverMultistepScheduler`` argument.
    """
    options = {**MULTISTEP_OPTIONS, "algorithm_type": "dpmsolver++", "solver_type": "midpoint", **overrides}
    return diffusers_scheduler("DPMSolverMultistepScheduler", **options)


def unipc_scheduler(**overrides: Any) -> DiffusersSolver:
    """UniPC: diffusers' ``UniPCMultistepScheduler`` predicting z_0, order 2, ``solver_type="bh2"`` (UniPC's advice
    for conditional sampling; its corrector reuses the next step's evaluation, so n steps are n evaluations), and
    :data:`MULTISTEP_OPTIONS`.

    Args:
        overrides: any ``UniPCMultistepScheduler`` argument.
    """
    options = {**MULTISTEP_OPTIONS, "predict_x0": True, "solver_type": "bh2", **overrides}
    return diffusers_scheduler("UniPCMultistepScheduler", **options)


#: solver name -> factory of its scheduler on :data:`LDM_SCHEDULE` (keyword arguments override the scheduler's)
SOLVERS: dict[str, Callable[..., Solver]] = {
    "ddim": ddim_scheduler,
    "ddim-leading": lambda **kw: ddim_scheduler("leading", **kw),
    "ddim-trailing": lambda **kw: ddim_scheduler("trailing", **kw),
    "ddim-middle": lambda **kw: ddim_scheduler("middle", **kw),
    "plms": plms_scheduler,
    "dpm++2m": dpm_solver_scheduler,
    "unipc": unipc_scheduler,
}


def make_scheduler(solver: str | Solver | None = None, **overrides: Any) -> Solver:
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


def is_stateless(scheduler: Solver) -> bool:
    """Whether a scheduler's step depends on (model output, t, sample) alone (DDIM), so its grid may be run in
    windows and its latent stepped in pieces; a multistep solver (PLMS, DPM-Solver++, UniPC) keeps a history across
    steps."""
    return isinstance(scheduler, DDIMScheduler)


def solver_state(scheduler: Solver) -> dict[str, Any]:
    """A multistep solver's history (PLMS: its last noise predictions and where it is in its grid; DPM-Solver++ and
    UniPC: :attr:`DiffusersSolver.HISTORY`), as CPU tensors, ints and None that ``torch.save(..., weights_only)``
    round-trips; empty for a stateless solver (DDIM).

    Args:
        scheduler: the solver after some steps.
    """
    if isinstance(scheduler, DiffusersSolver):
        return scheduler.state()
    if is_stateless(scheduler) or not isinstance(scheduler, PNDMScheduler):
        return {}
    return {
        "counter": int(scheduler.counter),
        "ets": [e.detach().cpu() for e in scheduler.ets],
        "cur_sample": scheduler.cur_sample.detach().cpu(),
    }


def load_solver_state(scheduler: Solver, state: dict[str, Any], device: str | torch.device | None = None) -> None:
    """Give a solver (after ``set_timesteps``) the history :func:`solver_state` saved, on `device`.

    Raises:
        ValueError: for a history that does not belong to this kind of solver, or none where it keeps one.
    """
    if isinstance(scheduler, DiffusersSolver):
        scheduler.load_state(state, device)
        return
    if not state:
        if not is_stateless(scheduler) and isinstance(scheduler, PNDMScheduler):
            raise ValueError(f"{type(scheduler).__name__} needs its saved history to resume; got none.")
        return
    if not isinstance(scheduler, PNDMScheduler) or set(state) != {"counter", "ets", "cur_sample"}:
        raise ValueError(f"solver history with keys {sorted(state)} does not fit {type(scheduler).__name__}.")
    scheduler.counter = int(state["counter"])
    scheduler.ets = [torch.as_tensor(e).to(device) for e in state["ets"]]
    scheduler.cur_sample = torch.as_tensor(state["cur_sample"]).to(device)
