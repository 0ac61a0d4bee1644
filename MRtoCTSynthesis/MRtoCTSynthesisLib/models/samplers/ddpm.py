"""Ancestral DDPM sampling through the Gaussian posterior (Lyu & Wang Table I, Eqs. 24-25)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ...checks import per_sample
from .base import Prediction, Sampler, StepNoise

__all__ = ["DDPMSampler", "posterior_coefficients"]


def posterior_coefficients(process, t: torch.Tensor, s: torch.Tensor):
    """Coefficients of ``q(x_s | x_t, x0) = N(c_x x_t + c_0 x0, var I)`` for ``s < t``.

    With ``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma^2_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``:
    ``c_x = alpha_{t|s} sigma_s^2 / sigma_t^2``, ``c_0 = alpha_s sigma^2_{t|s} / sigma_t^2`` and
    ``var = sigma^2_{t|s} sigma_s^2 / sigma_t^2``. For VP and ``s = t - 1/T`` these are Lyu & Wang
    Eqs. 7-8 (``sigma^2_{t|s} = beta_t``, ``var = beta~_t``).
    """
    a_ts, var_ts = process.transition(t, s)
    a_s, sig_s, sig_t = process.alpha(s), process.sigma(s), process.sigma(t)
    s2, t2 = sig_s ** 2, sig_t ** 2
    c_x = a_ts * s2 / t2
    c_0 = a_s * var_ts / t2
    var = var_ts * s2 / t2
    return c_x, c_0, var


class DDPMSampler(Sampler):
    """Ancestral sampling ``x_s ~ q(x_s | x_t, x0_hat)`` between consecutive grid times.

    The general alpha/sigma form of the posterior (:func:`posterior_coefficients`) makes this exactly
    Lyu & Wang Table I / Eqs. 24-25 (DDMM-Synth Eq. 9) for VP with ``steps = T`` and uniform spacing
    (grid ``t_i = i / T``): the mean ``c_x x_t + c_0 x0_hat`` with ``x0_hat`` from DDMM-Synth Eq. 6 is
    Eq. 25's ``(x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)``, the variance is
    ``beta~_t``, and the last step (to ``t = 0``) adds no noise. Fewer steps give the respaced DDPM;
    with ``alpha = 1`` it is the VE (SMLD-style) ancestral sampler. One network call per step.
    """

    name = "ddpm"
    default_spacing = "uniform"
    nfe_per_step = 1
    deterministic = False
    discrete_steps = True  # at most T steps on a VP process (one per trained timestep)

    def needs_noise(self, i: int, n: int) -> bool:
        return i < n - 1

    def step_noise(self, i: int, n: int, t: torch.Tensor, s: torch.Tensor) -> StepNoise:
        """The posterior draw's ``x0`` coefficient ``c_0`` and noise variance (0 on the last step)."""
        _, c_0, var = posterior_coefficients(self.process, t, s)
        return StepNoise(t, s, c_0, var if self.needs_noise(i, n) else torch.zeros_like(var))

    def step(self, i: int, n: int, x_t: torch.Tensor, pred: Prediction, t: torch.Tensor,
             s: torch.Tensor, noise: Optional[torch.Tensor], state: Any):
        c_x, c_0, var = posterior_coefficients(self.process, t, s)
        x_s = per_sample(c_x, x_t) * x_t + per_sample(c_0, x_t) * pred.x0
        if noise is not None:
            if pred.noise_variance is not None:  # a noise-composing hook already brought part of it
                var = pred.noise_variance
            x_s = x_s + per_sample(var.sqrt(), x_t) * noise
        return x_s, state
