"""Diffusion processes against closed forms: discrete DDPM alpha_bar, VE sigma(t), SDE coefficients."""

import json
import math

import numpy as np
import pytest
import torch

from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.models.diffusion import VEProcess, VPProcess, make_process

F64 = torch.float64


def all_processes():
    return [VPProcess(), VPProcess("cosine"), VPProcess(T=2000), VEProcess(), VEProcess("geometric")]


PROC_IDS = ["vp-linear", "vp-cosine", "vp-T2000", "ve-lyu", "ve-geometric"]


def np_cosine_alpha_bar(T, s=0.008):
    i = np.arange(T + 1, dtype=np.float64)
    f = np.cos((i / T + s) / (1 + s) * np.pi / 2) ** 2
    ab = f / f[0]
    betas = np.minimum(1 - ab[1:] / ab[:-1], 0.999)
    return np.cumprod(1 - betas)


@pytest.mark.parametrize("T", [1000, 2000])
def test_vp_linear_matches_discrete_alpha_bar(T):
    p = VPProcess("linear", T=T)
    ref = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T, dtype=np.float64))  # Lyu & Wang Eq. 3
    t = torch.arange(1, T + 1, dtype=F64) / T
    np.testing.assert_allclose(p.alpha(t).numpy() ** 2, ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(p.sigma(t).numpy() ** 2, 1 - ref, rtol=1e-10, atol=1e-15)
    # the sampling grid with steps = T is exactly t_i = i / T (then 0)
    grid = p.timesteps(T, "uniform")
    assert grid.shape == (T + 1,)
    assert torch.equal(grid[:-1], torch.arange(T, 0, -1, dtype=F64) / T)
    assert grid[-1] == 0.0
    assert float(p.alpha(torch.tensor(0.0, dtype=F64))) == 1.0
    assert float(p.sigma(torch.tensor(0.0, dtype=F64))) == 0.0


def test_vp_cosine_matches_discrete_alpha_bar():
    p = VPProcess("cosine", T=1000)
    t = torch.arange(1, 1001, dtype=F64) / 1000
    np.testing.assert_allclose(p.alpha(t).numpy() ** 2, np_cosine_alpha_bar(1000), rtol=1e-10)


def test_vp_transition_is_one_ddpm_step():
    """Between t=(i-1)/T and i/T: alpha_{t|s}^2 = 1 - beta_i, sigma^2_{t|s} = beta_i (Lyu & Wang Eq. 1)."""
    T = 1000
    p = VPProcess(T=T)
    betas = np.linspace(1e-4, 0.02, T)
    i = torch.tensor([1, 2, 500, 1000], dtype=F64)
    a, v = p.transition(i / T, (i - 1) / T)
    idx = i.long().numpy() - 1
    np.testing.assert_allclose(a.numpy() ** 2, 1 - betas[idx], rtol=1e-12)
    np.testing.assert_allclose(v.numpy(), betas[idx], rtol=1e-9)


@pytest.mark.parametrize("proc", all_processes(), ids=PROC_IDS)
def test_q_sample_marginal_variance(proc):
    g = torch.Generator().manual_seed(0)
    m, s = 0.3, 0.2
    n = 200_000
    for tv in (0.05, 0.3, 0.7, 1.0):
        x0 = m + s * torch.randn(n, generator=g, dtype=F64)
        eps = torch.randn(n, generator=g, dtype=F64)
        t = torch.tensor(tv, dtype=F64)
        xt = proc.q_sample(x0, t, eps)
        a, sg = float(proc.alpha(t)), float(proc.sigma(t))
        var = a * a * s * s + sg * sg
        assert abs(float(xt.var()) / var - 1) < 0.02, (tv, float(xt.var()), var)
        assert abs(float(xt.mean()) - a * m) < 4 * math.sqrt(var / n) + 1e-12


@pytest.mark.parametrize("proc", all_processes(), ids=PROC_IDS)
def test_log_snr_definition_and_inverse(proc):
    t = torch.linspace(max(proc.t_floor, 1e-4), 1.0, 997, dtype=F64)
    lam = proc.log_snr(t)
    np.testing.assert_allclose(lam.numpy(), (2 * torch.log(proc.alpha(t) / proc.sigma(t))).numpy(), rtol=1e-9,
                               atol=1e-9)
    assert torch.all(lam[1:] < lam[:-1]), "log-SNR must decrease with t"
    np.testing.assert_allclose(proc.t_from_log_snr(lam).numpy(), t.numpy(), rtol=0, atol=1e-10)
    # and the other way round
    lam2 = torch.linspace(float(lam[-1]), float(lam[0]), 101, dtype=F64)
    np.testing.assert_allclose(proc.log_snr(proc.t_from_log_snr(lam2)).numpy(), lam2.numpy(), atol=1e-8)


@pytest.mark.parametrize("proc", all_processes(), ids=PROC_IDS)
def test_sde_coefficients_match_finite_differences(proc):
    """f = d log alpha / dt, g^2 = d sigma^2 / dt - 2 f sigma^2 (central differences)."""
    if isinstance(proc, VPProcess):  # mid-segment points: the interpolation is linear per segment
        T = proc.T
        t = (torch.tensor([3, 100, 400, 777, T - 2], dtype=F64) + 0.5) / T
        h = 0.1 / T
    else:
        t = torch.tensor([0.01, 0.2, 0.5, 0.9, 0.99], dtype=F64)
        h = 1e-6
    f, g2 = proc.sde(t)
    dlog_a = (torch.log(proc.alpha(t + h)) - torch.log(proc.alpha(t - h))) / (2 * h)
    dvar = (proc.sigma(t + h) ** 2 - proc.sigma(t - h) ** 2) / (2 * h)
    np.testing.assert_allclose(f.numpy(), dlog_a.numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(g2.numpy(), (dvar - 2 * f * proc.sigma(t) ** 2).numpy(), rtol=1e-5)
    assert torch.all(g2 > 0)


def test_vp_sde_is_ddpm_beta():
    p = VPProcess(T=1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    i = np.array([1, 10, 999, 1000])
    f, g2 = p.sde(torch.tensor(i / 1000.0, dtype=F64))  # on a grid point: the segment below it
    np.testing.assert_allclose(g2.numpy(), -1000 * np.log1p(-betas[i - 1]), rtol=1e-12)
    np.testing.assert_allclose(f.numpy(), -0.5 * g2.numpy(), rtol=1e-12)


def test_ve_lyu_closed_form():
    """sigma(t)^2 = (s^(2t) - 1) / (2 ln s), g = s^t (Lyu & Wang Eqs. 26-27) with s = 25."""
    p = VEProcess("lyu", sigma=25.0, t_eps=1e-3)
    t = torch.linspace(0.0, 1.0, 11, dtype=F64)
    ref = np.sqrt((25.0 ** (2 * t.numpy()) - 1) / (2 * np.log(25.0)))
    np.testing.assert_allclose(p.sigma(t).numpy(), ref, rtol=1e-12, atol=1e-15)
    f, g2 = p.sde(t)
    np.testing.assert_allclose(g2.numpy(), 25.0 ** (2 * t.numpy()), rtol=1e-12)
    assert torch.all(f == 0) and torch.all(p.alpha(t) == 1)
    assert p.prior_std() == pytest.approx(math.sqrt(624 / (2 * math.log(25))), rel=1e-12)
    assert p.t_min == 1e-3
    g = torch.Generator().manual_seed(1)
    z = p.prior_sample((4, 1, 64, 64), generator=g)
    assert abs(float(z.std()) / p.prior_std() - 1) < 0.03


def test_ve_geometric_closed_form():
    p = VEProcess("geometric", sigma_min=0.01, sigma_max=50.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    np.testing.assert_allclose(p.sigma(t).numpy(), 0.01 * 5000.0 ** t.numpy(), rtol=1e-12)
    assert p.t_min == 0.0 and p.prior_std() == pytest.approx(50.0)


@pytest.mark.parametrize("proc", all_processes(), ids=PROC_IDS)
def test_eps_x0_score_conversions(proc):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 1, 5, 5, generator=g, dtype=F64)
    eps = torch.randn(3, 1, 5, 5, generator=g, dtype=F64)
    t = torch.tensor([0.05, 0.5, 1.0], dtype=F64)  # per-sample times
    xt = proc.q_sample(x0, t, eps)
    torch.testing.assert_close(proc.x0_from_eps(xt, eps, t), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(proc.eps_from_x0(xt, x0, t), eps, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(proc.score_from_eps(eps, t), -eps / proc.sigma(t).view(3, 1, 1, 1))
    assert torch.allclose(proc.noise_condition(t), 1000 * t)


@pytest.mark.parametrize("proc", all_processes(), ids=PROC_IDS)
@pytest.mark.parametrize("spacing", ["uniform", "logsnr", "quadratic"])
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_timesteps(proc, spacing, steps):
    grid = proc.timesteps(steps, spacing)
    assert grid.shape == (steps + 1,) and grid.dtype == F64
    assert grid[0] == 1.0 and grid[-1] == proc.t_min
    assert torch.all(grid[1:] < grid[:-1])
    if spacing == "logsnr" and steps > 2:
        lam = proc.log_snr(grid[: steps if proc.t_floor > proc.t_min else steps + 1])
        d = lam[1:] - lam[:-1]
        np.testing.assert_allclose(d.numpy(), np.full(d.shape, float(d.mean())), rtol=1e-6)


def test_vp_uniform_grid_uses_trained_steps():
    """DDMM-Synth: 100 DDIM steps from T = 2000 -> every evaluation time is a whole DDPM step i / T."""
    p = VPProcess(T=2000)
    grid = p.timesteps(100, "uniform")
    idx = grid * 2000
    assert float((idx - idx.round()).abs().max()) < 1e-9
    idx = idx.round()
    assert idx[0] == 2000 and idx[-2] == 1 and idx[-1] == 0
    steps = (idx[:-2] - idx[1:-1]).numpy()
    assert steps.min() >= 20 and steps.max() <= 21  # evenly spread
    # more steps than T: continuous (not rounded) but still strictly decreasing
    g = VPProcess(T=10).timesteps(30, "uniform")
    assert torch.all(g[1:] < g[:-1]) and not torch.equal(g * 10, (g * 10).round())


def test_timesteps_errors():
    p = VPProcess()
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(InputError):
            p.timesteps(bad)
    with pytest.raises(InputError):
        p.timesteps(10, "cubic")


def test_sample_training_t():
    g = torch.Generator().manual_seed(3)
    p = VPProcess(T=1000)
    t = p.sample_training_t(10_000, generator=g)
    i = t * 1000
    assert torch.allclose(i, i.round(), atol=1e-3)
    assert int(i.round().min()) >= 1 and int(i.round().max()) == 1000
    v = VEProcess(t_eps=1e-3)
    t = v.sample_training_t(10_000, generator=g)
    assert float(t.min()) >= 1e-3 and float(t.max()) < 1.0 and abs(float(t.mean()) - 0.5005) < 0.01


@pytest.mark.parametrize("proc", all_processes(), ids=PROC_IDS)
def test_config_round_trip(proc):
    cfg = proc.to_config()
    cfg2 = json.loads(json.dumps(cfg))
    p2 = make_process(cfg2)
    assert type(p2) is type(proc) and p2.to_config() == cfg and p2 == proc
    t = torch.linspace(0, 1, 33, dtype=F64)
    assert torch.equal(p2.sigma(t), proc.sigma(t)) and torch.equal(p2.alpha(t), proc.alpha(t))
    assert type(proc).from_config(cfg) == proc


def test_config_errors():
    with pytest.raises(InputError):
        make_process({"kind": "vx"})
    with pytest.raises(InputError):
        make_process({"kind": "vp", "schedule": "linear", "bogus": 1})
    with pytest.raises(InputError):
        VPProcess.from_config({"kind": "ve"})
    with pytest.raises(InputError):
        VPProcess(schedule="sigmoid")
    with pytest.raises(InputError):
        VPProcess(T=0)
    with pytest.raises(InputError):
        VPProcess(beta_start=0.02, beta_end=1e-4)
    with pytest.raises(InputError):
        VEProcess(sigma=1.0)
    with pytest.raises(InputError):
        VEProcess(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(InputError):
        VEProcess(t_eps=0.0)
