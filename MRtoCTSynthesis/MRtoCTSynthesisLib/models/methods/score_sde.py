"""Conditional VE-SDE score model (Lyu & Wang Sec. III-B, Eqs. 26-33, Table II).

Variance-exploding SDE dx = s^t dw with sigma(t)^2 = (s^(2t) - 1) / (2 ln s) (Lyu & Wang Eqs. 26-27,
s = 25), trained by denoising score matching on continuous t (Eq. 28, lambda = sigma^2). The paper's
samplers are Euler-Maruyama (``em``, Eq. 30), predictor-corrector (``pc``, Eq. 31) and the probability
flow ODE (``ode``, Eq. 33); DPM-Solver++ also applies (alpha = 1) and is the fast default.
"""

from __future__ import annotations

from .conditional_diffusion import ConditionalDiffusion


class ScoreSDE(ConditionalDiffusion):
    method = "score_sde"
    default_process = {"kind": "ve", "schedule": "lyu", "sigma": 25.0, "t_eps": 1e-3}
