"""DDIM sampling with stochasticity ``eta`` (DDMM-Synth: 100 DDIM steps from T = 2000)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ...checks import check_real, per_sample
from .base import SAMPLER_OPTION, Prediction, Sampler, StepNoise

__all__ = ["DDIMSampler"]


class DDIMSampler(Sampler):
    """DDIM: ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - v) eps_hat + sqrt(v) z``.

    ``v = eta^2 * sigma^2_{t|s} sigma_s^2 / sigma_t^2`` is ``eta^2`` times the DDPM posterior variance,
    so ``eta = 0`` is the deterministic DDIM (the first-order exponential integrator of the
    probability-flow ODE; DDMM-Synth's sampler) and ``eta = 1`` reproduces the ancestral
    :class:`~.ddpm.DDPMSampler` step (same mean and variance, same noise draws). ``eps_hat`` is the
    noise consistent with the (clipped/hooked) ``x0_hat``. Works for VP and VE (``alpha = 1``).
    One network call per step; DDMM-Synth Eqs. 4-6 replace ``x0_hat`` through the ``x0_hook``.
    """

    name = "ddim"
    default_spacing = "uniform"
    nfe_per_step = 1
    discrete_steps = True  # at most T steps on a VP process (one per trained timestep)

    def __init__(self, process, steps, eta: float = 0.0, **kwargs):
        super().__init__(process, steps, **kwargs)
        self.eta = check_real(eta, "eta", lo=0.0, hi=1.0, fix="use eta between 0 (deterministic) and 1 (DDPM-like)",
                              what=SAMPLER_OPTION)
        self.deterministic = self.eta == 0.0

    def needs_noise(self, i: int, n: int) -> bool:
        return self.eta > 0.0 and i < n - 1

    def _coefficients(self, t: torch.Tensor, s: torch.Tensor):
        proc = self.process
        _, var_ts = proc.transition(t, s)
        a_s, sig_s, sig_t = proc.alpha(s), proc.sigma(s), proc.sigma(t)
        v = (self.eta ** 2) * var_ts * sig_s ** 2 / sig_t ** 2
        c_eps = (sig_s ** 2 - v).clamp_min(0.0).sqrt()
        return a_s, c_eps, v

    def step_noise(self, i: int, n: int, t: torch.Tensor, s: torch.Tensor) -> Optional[StepNoise]:
        """For ``eta > 0``: with ``eps_hat = (x_t - alpha_t x0) / sigma_t`` the step's ``x0`` coefficient
        is ``alpha_s - c_eps alpha_t / sigma_t`` and its fresh noise variance ``v``. ``None`` for
        ``eta = 0`` (a deterministic step has no noise to share)."""
        if self.eta == 0.0:
            return None
        a_s, c_eps, v = self._coefficients(t, s)
        c_0 = a_s - c_eps * self.process.alpha(t) / self.process.sigma(t)
        return StepNoise(t, s, c_0, v if self.needs_noise(i, n) else torch.zeros_like(v))

    def step(self, i: int, n: int, x_t: torch.Tensor, pred: Prediction, t: torch.Tensor,
             s: torch.Tensor, noise: Optional[torch.Tensor], state: Any):
        a_s, c_eps, v = self._coefficients(t, s)
        x_s = per_sample(a_s, x_t) * pred.x0 + per_sample(c_eps, x_t) * pred.eps
        if noise is not None:
            if pred.noise_variance is not None:  # a noise-composing hook already brought part of it
                v = pred.noise_variance
            x_s = x_s + per_sample(v.sqrt(), x_t) * noise
        return x_s, state
