"""Solvers: PLMS with its timesteps in step (an exact noise predictor lands on the DDIM result, MONAI's grid does
not; an inexact one gives CompVis' PLMS numbers), solvers by name, a registry entry's solver, a resumed history."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from monai.networks.schedulers import PNDMScheduler
from support import tiny_denoiser

from monai_disc.inferers import (
    DEFAULT_NUM_INFERENCE_STEPS,
    DEFAULT_SOLVER,
    LDM_SCHEDULE,
    MaskLDMSampler,
    PLMSScheduler,
    SeparatedConditionInferer,
    SpacedDDIMScheduler,
    ddim_scheduler,
    diffusers_scheduler,
    entry_sampler,
    is_stateless,
    make_scheduler,
    plms_scheduler,
    sampler_options,
)
from monai_disc.inferers.schedulers import load_solver_state, solver_state


class ExactEps(torch.nn.Module):
    """The true noise of a sample that lies on the deterministic path from `x0` with noise `e`.

    It reads the noise level from the timestep it is told, so it is right only when the sampler tells the
    timestep of the sample it passes.
    """

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.x0, self.alphas = x0, alphas_cumprod
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        t = int(timesteps.reshape(-1)[0])
        self.calls.append(t)
        a = self.alphas[t]
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


def _run(scheduler, steps: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    torch.manual_seed(0)
    x0, e = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    a = scheduler.alphas_cumprod
    oracle = ExactEps(x0, a)
    scheduler.set_timesteps(steps)
    start = int(scheduler.timesteps[0])  # z_T at the grid's first noise level
    x_t = a[start].sqrt() * x0 + (1 - a[start]).sqrt() * e
    sampler = MaskLDMSampler(scheduler, num_inference_steps=steps, progress=False)
    out = sampler.sample_latents(x_t, torch.zeros(1, 1, 1), oracle)
    expected = a[0].sqrt() * x0 + (1 - a[0]).sqrt() * e  # the final alpha-bar is that of step 0
    return out, expected, oracle.calls


def test_plms_grid_repeats_the_second_timestep():
    scheduler = plms_scheduler()
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == [901, 801, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert scheduler.num_inference_steps == 10


@pytest.mark.parametrize("steps", [10, 20])
def test_plms_with_an_exact_noise_predictor_lands_where_ddim_does(steps):
    out, expected, calls = _run(plms_scheduler(), steps)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert len(calls) == steps + 1
    ddim_out, ddim_expected, _ = _run(ddim_scheduler(), steps)
    assert (ddim_out - ddim_expected).abs().max() > 1e-3  # MONAI's DDIM grid is not aligned either (linspace)
    # MONAI's PLMS grid tells the network a timestep one step below its sample's: the result is off
    monai_out, _, _ = _run(
        PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, **LDM_SCHEDULE), steps
    )
    ours, theirs = (out - expected).abs().max(), (monai_out - expected).abs().max()
    assert theirs > 10 * max(float(ours), 1e-5)


def test_sc_refuses_an_inner_fuse_step_with_a_multistep_scheduler():
    sampler = MaskLDMSampler(plms_scheduler(), num_inference_steps=10, progress=False)
    with pytest.raises(ValueError, match="history of noise predictions"):
        SeparatedConditionInferer(sampler, fuse_step=5)
    SeparatedConditionInferer(sampler)  # fusing at the end runs the whole grid in one loop: fine
    net = tiny_denoiser()
    masks = torch.zeros(1, 32, 32, dtype=torch.long)
    masks[:, :, 16:] = 2
    tiles = SeparatedConditionInferer(sampler).sample(masks, _Pool(), net, seeds=[0])
    assert tiles.shape == (1, 3, 32, 32) and torch.isfinite(tiles).all()


class _Pool(torch.nn.Module):
    downsample_factor = 4

    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(z, scale_factor=4) / 200


class Wobbly(torch.nn.Module):
    """A noise predictor that is not exact: a fixed nonlinear function of the sample and the timestep."""

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        t = timesteps.reshape(-1, 1, 1, 1).float() / 1000
        return torch.tanh(0.7 * x + t) + 0.3 * x * t


def _compvis_plms(eps_fn, x: torch.Tensor, alphas: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[int]]:
    """The PLMS loop of CompVis latent-diffusion (ldm/models/diffusion/plms.py, ``p_sample_plms``), transcribed:
    a Heun start at the first step, then 2nd, 3rd and 4th order Adams-Bashforth on the last noise predictions.
    The grid is ``k * (1000 // n) + 1`` for k < n (diffusers'; CompVis' ``range(0, 1000, c)`` takes one more entry
    when n does not divide 1000)."""
    c = 1000 // steps
    ts = [k * c + 1 for k in range(steps)]
    a = alphas[ts]
    a_prev = torch.cat([alphas[:1], alphas[ts[:-1]]])  # the last step ends at alpha-bar of step 0
    calls: list[int] = []

    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        calls.append(t)
        return eps_fn(x, torch.full((x.shape[0],), t))

    def x_prev(x: torch.Tensor, e: torch.Tensor, i: int) -> torch.Tensor:
        x0 = (x - (1 - a[i]).sqrt() * e) / a[i].sqrt()
        return a_prev[i].sqrt() * x0 + (1 - a_prev[i]).sqrt() * e

    old: list[torch.Tensor] = []
    for i in reversed(range(len(ts))):
        e = eps(x, ts[i])
        if not old:
            nxt = x_prev(x, e, i)
            e_prime = (e + eps(nxt, ts[i - 1] if i > 0 else ts[0])) / 2
        elif len(old) == 1:
            e_prime = (3 * e - old[-1]) / 2
        elif len(old) == 2:
            e_prime = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_prime = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = x_prev(x, e_prime, i)
        old.append(e)
    return x, calls


@pytest.mark.parametrize("steps", [3, 10])
def test_plms_equals_the_compvis_plms_loop_with_an_inexact_network(steps):
    torch.manual_seed(1)
    noise = torch.randn(2, 3, 4, 4)
    net = Wobbly()
    sampler = MaskLDMSampler(plms_scheduler(), num_inference_steps=steps, progress=False)
    ours = sampler.sample_latents(noise, torch.zeros(2, 1, 1), CallCounter(net))
    reference, calls = _compvis_plms(lambda x, t: net(x, t, None), noise, sampler.scheduler.alphas_cumprod, steps)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    sampler.scheduler.set_timesteps(steps)
    assert sampler.scheduler.timesteps.tolist() == calls  # the same timestep at every call, steps + 1 calls
    assert (ours - noise).abs().max() > 0.1  # the loop did something


class CallCounter(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.net(x, timesteps, context)


def test_solvers_by_name_and_their_grids():
    assert isinstance(make_scheduler(), PLMSScheduler) and DEFAULT_SOLVER == "plms"
    leading, trailing = make_scheduler("ddim-leading"), make_scheduler("ddim-trailing")
    leading.set_timesteps(2)
    trailing.set_timesteps(2)
    assert leading.timesteps.tolist() == [501, 1] and trailing.timesteps.tolist() == [999, 499]
    middle = make_scheduler("ddim-middle")
    middle.set_timesteps(1)
    assert middle.timesteps.tolist() == [501]  # one step from the middle of the schedule to its end
    with pytest.raises(ValueError, match="'middle' grid is one step"):
        middle.set_timesteps(2)
    assert entry_sampler("gd1").num_inference_steps == 1 and entry_sampler("gd1").scheduler.timestep_spacing == "middle"
    assert is_stateless(leading) and not is_stateless(make_scheduler("plms"))
    with pytest.raises(ValueError, match="unknown solver 'dpm'.*ddim"):
        make_scheduler("dpm")


def test_a_registry_entrys_solver_and_steps_and_their_overrides():
    assert sampler_options()["scheduler"] == DEFAULT_SOLVER
    assert sampler_options()["num_inference_steps"] == DEFAULT_NUM_INFERENCE_STEPS
    student = entry_sampler("gd2")
    assert isinstance(student.scheduler, SpacedDDIMScheduler) and student.num_inference_steps == 2
    given = entry_sampler("gd2", solver="plms", num_inference_steps=7)
    assert isinstance(given.scheduler, PLMSScheduler) and given.num_inference_steps == 7
    sc = entry_sampler("sc", solver="ddim", fuse_step=2, num_inference_steps=4)
    assert isinstance(sc, SeparatedConditionInferer) and sc.fuse_step == 2
    with pytest.raises(ValueError, match="history of noise predictions"):
        entry_sampler("sc", fuse_step=1)  # PLMS, the default: refused, with the reason
    with pytest.raises(ValueError, match="unknown solver"):
        sampler_options("sd", solver="euler")


def test_a_plms_run_resumed_from_its_saved_history_equals_the_whole_run():
    torch.manual_seed(2)
    x0 = torch.randn(1, 3, 4, 4)
    net = Wobbly()
    whole = plms_scheduler()
    whole.set_timesteps(6)
    grid = [int(t) for t in whole.timesteps]
    x = x0.clone()
    for t in grid:
        x = whole.step(net(x, torch.tensor([t]), None), t, x)[0]
    first, second = plms_scheduler(), plms_scheduler()
    first.set_timesteps(6)
    y = x0.clone()
    for t in grid[:4]:
        y = first.step(net(y, torch.tensor([t]), None), t, y)[0]
    saved = solver_state(first)
    second.set_timesteps(6)
    load_solver_state(second, saved)
    for t in grid[4:]:
        y = second.step(net(y, torch.tensor([t]), None), t, y)[0]
    torch.testing.assert_close(y, x, atol=0, rtol=0)
    assert solver_state(make_scheduler("ddim")) == {}
    with pytest.raises(ValueError, match="needs its saved history"):
        load_solver_state(plms_scheduler(), {})


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 4, 50])
def test_diffusers_ddim_through_the_adapter_equals_monais_ddim(spacing, steps):
    """The adapter that serves DPM-Solver++ and UniPC, checked where diffusers and MONAI both have the solver."""
    ours = ddim_scheduler(spacing)
    theirs = diffusers_scheduler(
        "DDIMScheduler", clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing=spacing
    )
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert theirs.timesteps.tolist() == ours.timesteps.tolist() and theirs.num_train_timesteps == 1000
    torch.testing.assert_close(theirs.alphas_cumprod, ours.alphas_cumprod)
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(2, 3, 8, 8, generator=g)
    y = x.clone()
    for t in ours.timesteps.tolist():
        eps = torch.randn(x.shape, generator=g)
        x, x0_ours = ours.step(eps, t, x)
        y, x0_theirs = theirs.step(eps, t, y)
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x0_theirs, x0_ours, atol=1e-5, rtol=1e-5)
    assert not is_stateless(theirs) and solver_state(theirs) == {}  # diffusers' DDIM keeps no history


def _dpm_solver_pp_2m(eps_fn, x: torch.Tensor, alphas: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[int]]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), transcribed: data predictions x0_i, a first-order start, then
    D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1} with r = h_{i-1} / h_i; on the trailing grid t_k = round(1000 - k 1000/n)
    - 1, its last step first order to sigma = 0 (the predicted z_0)."""
    ts = [round(1000 - k * 1000 / steps) - 1 for k in range(steps)]
    alpha = [alphas[t].sqrt() for t in ts] + [torch.tensor(1.0)]
    sigma = [(1 - alphas[t]).sqrt() for t in ts] + [torch.tensor(0.0)]
    lam = [torch.log(a / s) for a, s in zip(alpha[:-1], sigma[:-1])]
    calls: list[int] = []
    old, h_old = None, None
    for i, t in enumerate(ts):
        calls.append(t)
        x0 = (x - sigma[i] * eps_fn(x, torch.full((x.shape[0],), t))) / alpha[i]
        if i == steps - 1:
            x = x0
            break
        h = lam[i + 1] - lam[i]
        d = x0 if old is None else (1 + h / (2 * h_old)) * x0 - h / (2 * h_old) * old
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * torch.expm1(-h) * d
        old, h_old = x0, h
    return x, calls


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_dpm_solver_equals_the_papers_2m_update_with_an_inexact_network(steps):
    torch.manual_seed(3)
    noise = torch.randn(2, 3, 4, 4)
    net = Wobbly()
    sampler = MaskLDMSampler("dpm++2m", num_inference_steps=steps, progress=False)
    ours = sampler.sample_latents(noise, torch.zeros(2, 1, 1), net)
    reference, calls = _dpm_solver_pp_2m(lambda x, t: net(x, t, None), noise, sampler.scheduler.alphas_cumprod, steps)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert sampler.scheduler.timesteps.tolist() == calls  # one evaluation per step, at the trailing grid


@pytest.mark.parametrize("solver", ["dpm++2m", "unipc"])
def test_multistep_solvers_with_an_exact_noise_predictor_land_on_the_data(solver):
    torch.manual_seed(0)
    x0, e = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    scheduler = make_scheduler(solver)
    a = scheduler.alphas_cumprod
    oracle = ExactEps(x0, a)
    x_t = a[999].sqrt() * x0 + (1 - a[999]).sqrt() * e
    out = MaskLDMSampler(scheduler, num_inference_steps=4, progress=False).sample_latents(
        x_t, torch.zeros(1, 1, 1), oracle
    )
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)  # final sigma zero: the last step returns z_0
    assert oracle.calls == [999, 749, 499, 249] and not is_stateless(scheduler)


@pytest.mark.parametrize("solver", ["dpm++2m", "unipc"])
def test_a_multistep_solver_resumed_from_its_saved_history_equals_the_whole_run(solver, tmp_path):
    torch.manual_seed(4)
    x0 = torch.randn(1, 3, 4, 4)
    net = Wobbly()
    whole = make_scheduler(solver)
    whole.set_timesteps(6)
    grid = [int(t) for t in whole.timesteps]
    x = x0.clone()
    for t in grid:
        x = whole.step(net(x, torch.tensor([t]), None), t, x)[0]
    first, second = make_scheduler(solver), make_scheduler(solver)
    first.set_timesteps(6)
    y = x0.clone()
    for t in grid[:3]:
        y = first.step(net(y, torch.tensor([t]), None), t, y)[0]
    torch.save(solver_state(first), tmp_path / "state.pt")  # as generate-region keeps it
    second.set_timesteps(6)
    load_solver_state(second, torch.load(tmp_path / "state.pt", weights_only=True))
    for t in grid[3:]:
        y = second.step(net(y, torch.tensor([t]), None), t, y)[0]
    torch.testing.assert_close(y, x, atol=0, rtol=0)
    fresh = make_scheduler(solver)
    fresh.set_timesteps(6)
    for t in grid[3:]:  # without the history the same steps go elsewhere
        x0 = fresh.step(net(x0, torch.tensor([t]), None), t, x0)[0]
    assert (x0 - x).abs().max() > 1e-3
    with pytest.raises(ValueError, match="does not fit"):
        load_solver_state(second, {})
    with pytest.raises(ValueError, match="does not fit"):
        load_solver_state(second, solver_state(_plms_after_one_step()))


def _plms_after_one_step() -> PLMSScheduler:
    s = plms_scheduler()
    s.set_timesteps(4)
    s.step(torch.zeros(1, 3, 4, 4), int(s.timesteps[0]), torch.zeros(1, 3, 4, 4))
    return s


@pytest.mark.parametrize("solver", ["dpm++2m", "unipc"])
def test_sc_refuses_an_inner_fuse_step_with_diffusers_multistep_solvers(solver):
    with pytest.raises(ValueError, match="history of noise predictions"):
        entry_sampler("sc", solver=solver, fuse_step=2, num_inference_steps=4)
    sc = entry_sampler("sc", solver=solver, num_inference_steps=4)  # fused at the end: one loop, fine
    assert isinstance(sc, SeparatedConditionInferer) and sc.fuse_step is None


def test_diffusers_is_imported_only_for_its_solvers_and_reaches_no_network():
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = socket.create_connection = refuse\n"
        "import monai_disc.inferers as inf\n"
        "assert 'diffusers' not in sys.modules\n"
        "s = inf.make_scheduler('unipc'); s.set_timesteps(2); inf.make_scheduler('dpm++2m')\n"
        "print(type(s.scheduler).__name__, s.timesteps.tolist())\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-3:] == ["UniPCMultistepScheduler", "[999,", "499]"]
