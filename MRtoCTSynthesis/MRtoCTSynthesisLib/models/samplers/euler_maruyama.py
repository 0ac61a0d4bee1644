"""Euler-Maruyama discretisation of the reverse-time SDE (Lyu & Wang Eqs. 29-30, Algorithm 2)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ...checks import per_sample
from .base import Prediction, Sampler

__all__ = ["EulerMaruyamaSampler", "em_step"]


def em_step(process, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
            noise: Optional[torch.Tensor]) -> torch.Tensor:
    """One reverse EM step from ``t`` to ``s < t`` with ``h = t - s``:

    ``x_s = x_t - [f(t) x_t - g(t)^2 score] h + g(t) sqrt(h) z``, ``score = -eps / sigma(t)``.
    For the Lyu VE process (``f = 0``, ``g = s^t``) this is Lyu & Wang Eq. 30.
    """
    f, g2 = process.sde(t)
    h = t - s
    score = process.score_from_eps(eps, t)
    x_s = x_t - (per_sample(f * h, x_t) * x_t - per_sample(g2 * h, x_t) * score)
    if noise is not None:
        x_s = x_s + per_sample((g2 * h).sqrt(), x_t) * noise
    return x_s


class EulerMaruyamaSampler(Sampler):
    """Reverse SDE ``dx = [f x - g^2 grad log p_t] dt + g dW_bar`` solved by Euler-Maruyama.

    ``f``/``g^2`` come from ``process.sde`` (so the same code runs the VP-SDE and both VE schedules);
    the score is ``-eps_hat / sigma(t)`` with ``eps_hat`` consistent with the clipped/hooked ``x0``.
    The final sample is the ``x0`` prediction of the last evaluation (``t_{N-1}``), score-SDE's
    "denoise" step without an extra network call. One network call per step; first-order in ``h``,
    so it needs a few hundred steps (Lyu & Wang used 1000).
    """

    name = "em"
    default_spacing = "uniform"
    nfe_per_step = 1

    def needs_noise(self, i: int, n: int) -> bool:
        return i < n - 1

    def step(self, i: int, n: int, x_t: torch.Tensor, pred: Prediction, t: torch.Tensor,
             s: torch.Tensor, noise: Optional[torch.Tensor], state: Any):
        return em_step(self.process, x_t, pred.eps, t, s, noise), state
