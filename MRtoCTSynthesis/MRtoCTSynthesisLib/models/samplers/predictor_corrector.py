"""Predictor-corrector sampling: reverse-SDE predictor + annealed Langevin corrector (Lyu & Wang Eq. 31,
Algorithm 3)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ...checks import check_int, check_real, per_sample
from ...errors import InputError
from .base import SAMPLER_OPTION, Prediction, Sampler, SamplingRun
from .euler_maruyama import em_step

__all__ = ["PredictorCorrectorSampler", "langevin_step", "reverse_diffusion_step"]

PREDICTORS = ("em", "reverse_diffusion")


def langevin_step(x: torch.Tensor, score: torch.Tensor, z: torch.Tensor, snr: float,
                  scale: torch.Tensor) -> torch.Tensor:
    """One Langevin corrector move ``x + e * score + sqrt(2 e) z`` with a per-sample step

    ``e = 2 * scale * (snr * ||z|| / ||score||)^2`` (norms over all pixels of each sample).

    This is the score-SDE convention; in Lyu & Wang's notation (Eq. 16 with the step of Eq. 31,
    ``x + gamma/2 s + sqrt(gamma) z``) it is ``gamma = 2 e``, i.e. Eq. 31 with the factor
    ``4 * scale`` on ``(r ||z|| / ||s||)^2``, the convention the usual ``snr = 0.16`` was tuned for.
    """
    b = x.shape[0]
    z_norm = z.reshape(b, -1).norm(dim=1)
    s_norm = score.reshape(b, -1).norm(dim=1).clamp_min(torch.finfo(score.dtype).tiny)
    e = 2.0 * scale.to(x.dtype) * (snr * z_norm / s_norm) ** 2  # [B]
    e = per_sample(e, x)
    return x + e * score + (2.0 * e).sqrt() * z


def reverse_diffusion_step(process, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                           s: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
    """score-SDE's "reverse diffusion" predictor in alpha/sigma form:

    ``x_s = (2 - alpha_{t|s}) x_t + sigma^2_{t|s} score + sigma_{t|s} z`` (VE:
    ``x_t + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_t^2 - sigma_s^2) z``).
    """
    a_ts, var_ts = process.transition(t, s)
    score = process.score_from_eps(eps, t)
    x_s = per_sample(2.0 - a_ts, x_t) * x_t + per_sample(var_ts, x_t) * score
    if noise is not None:
        x_s = x_s + per_sample(var_ts.sqrt(), x_t) * noise
    return x_s


class PredictorCorrectorSampler(Sampler):
    """Predictor-corrector sampler (Lyu & Wang Eq. 31, Algorithm 3).

    At each grid time ``t_i`` (``i = 0..N-1``):

    1. **corrector**: ``corrector_steps`` annealed-Langevin moves at ``t_i`` (:func:`langevin_step`),
       each with a fresh network call and the step size of Eq. 31 computed per sample from the
       norms of the noise and of the score at the *current* iterate;
    2. **predictor**: one reverse-SDE step ``t_i -> t_{i+1}`` (Euler-Maruyama, Lyu & Wang Eq. 30, or
       ``predictor="reverse_diffusion"``).

    Order: Lyu & Wang's Algorithm 3 writes predictor-then-corrector within a loop iteration (and reuses
    the predictor's score ``s(x_i)`` in the corrector). We run the corrector *first*, at the time the
    network is evaluated (the score-SDE reference order), because (a) each Langevin move then uses the
    score of the iterate it moves, as Langevin dynamics requires; (b) the corrector never runs at
    ``t_min``, where VP has ``sigma = 0`` and no score; (c) across the whole chain the alternation
    P, C, P, C... is the same except that the first corrector refines the prior sample and there is no
    corrector after the final predictor (whose output is replaced by the denoised ``x0`` anyway).

    VP: the Langevin step is multiplied by the one-step ``alpha_i = 1 - beta_i``
    (``= exp(2 f(t) / T)``) as in score-SDE's corrector; VE uses 1.

    NFE = ``steps * (1 + corrector_steps)``. The returned sample is the ``x0`` prediction of the last
    predictor call.
    """

    name = "pc"
    default_spacing = "uniform"

    def __init__(self, process, steps, snr: float = 0.16, corrector_steps: int = 1,
                 predictor: str = "em", **kwargs):
        super().__init__(process, steps, **kwargs)
        self.snr = check_real(snr, "snr", lo=0.0, lo_open=True, fix="use a small positive ratio, e.g. 0.16",
                              what=SAMPLER_OPTION)
        self.corrector_steps = check_int(corrector_steps, "corrector_steps", minimum=0, what=SAMPLER_OPTION)
        if predictor not in PREDICTORS:
            raise InputError(f"unknown PC predictor {predictor!r}", f"use one of {list(PREDICTORS)}")
        self.predictor = predictor
        self.nfe_per_step = 1 + self.corrector_steps

    def needs_noise(self, i: int, n: int) -> bool:
        return i < n - 1

    def langevin_scale(self, t: torch.Tensor) -> torch.Tensor:
        """score-SDE's ``alpha`` factor of the Langevin step: ``1 - beta_i`` for VP, 1 for VE."""
        f, _ = self.process.sde(t)
        T = getattr(self.process, "T", None)
        if self.process.kind == "vp" and T:
            return torch.exp(2.0 * f / T)
        return torch.ones_like(f)

    def before_prediction(self, run: SamplingRun, i: int, n: int, x: torch.Tensor,
                          t: torch.Tensor) -> torch.Tensor:
        if self.corrector_steps == 0:
            return x
        scale = self.langevin_scale(t)
        for _ in range(self.corrector_steps):
            pred = run.predict(x, t)
            score = self.process.score_from_eps(pred.eps, t)
            z = run.randn_like(x)
            x = langevin_step(x, score, z, self.snr, scale)
        return x

    def step(self, i: int, n: int, x_t: torch.Tensor, pred: Prediction, t: torch.Tensor,
             s: torch.Tensor, noise: Optional[torch.Tensor], state: Any):
        if self.predictor == "em":
            return em_step(self.process, x_t, pred.eps, t, s, noise), state
        return reverse_diffusion_step(self.process, x_t, pred.eps, t, s, noise), state
