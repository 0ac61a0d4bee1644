"""Probability-flow ODE sampler with an adaptive Dormand-Prince RK45 solver (Lyu & Wang Eqs. 32-33, Algorithm 4)."""

from __future__ import annotations

from typing import Optional

import torch

from ...checks import check_int, check_real, per_sample
from ...errors import InputError
from ..diffusion.process import work_dtype
from .base import SAMPLER_OPTION, Sampler, SampleResult, SamplingRun

__all__ = ["ProbabilityFlowODESampler", "DOPRI5"]

# Dormand-Prince 5(4) tableau: nodes c, stage matrix a, 5th-order weights b5, 4th-order weights b4.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))

#: the tableau, for reference and tests
DOPRI5 = {"c": _C, "a": _A, "b5": _B5, "b4": _B4}


ODE_VARIABLES = ("logsnr", "t")


class ProbabilityFlowODESampler(Sampler):
    """Deterministic sampling by the probability-flow ODE, solved adaptively.

    ODE (Lyu & Wang Eq. 32): ``dx/dt = f(t) x - 1/2 g(t)^2 grad log p_t(x)`` with
    ``grad log p_t = -eps_hat / sigma(t)``; for the Lyu VE process ``f = 0``, ``g = s^t`` and this is
    Eq. 33. It is integrated from ``t = 1`` down to ``t_end`` with an explicit Runge-Kutta 5(4)
    Dormand-Prince pair (the method of Lyu & Wang Algorithm 4 / scipy's RK45), written in torch:
    FSAL (6 network calls per attempted step after the first), per-sample RMS error
    ``|err| / (atol + rtol max(|x_old|, |x_new|))`` with the step accepted when the worst sample's
    norm is <= 1, and step-size adaptation ``h <- h * clamp(0.9 err^-1/5, 0.2, 10)``.

    Integration variable (``variable``):

    * ``"logsnr"`` (default): the same ODE written in ``lambda = log(alpha / sigma)``,
      ``dx/dlambda = (d log alpha / d lambda) x - sigma(t) eps_hat`` with
      ``d log alpha / d lambda = -2 f sigma^2 / g^2`` (``sigma^2`` for VP, 0 for VE), which follows
      from ``d lambda / dt = -g^2 / (2 sigma^2)``. Same trajectory, but the right-hand side is smooth
      in ``lambda`` for every process: the VP process of this engine interpolates ``log alpha_bar``
      linearly between the DDPM grid points, so in ``t`` its ``f`` and ``g^2`` are piecewise constant
      (a staircase of ``T`` small jumps) and an embedded error estimate, which assumes a smooth
      right-hand side, stalls at an error of about 1e-3 however small ``rtol`` is.
    * ``"t"``: Eq. 32/33 literally, in ``t`` (fine for the smooth VE schedules).

    Step size, time and acceptance live on the device; the host reads the current position once
    every ``check_every`` attempted steps to decide termination (and to report progress), the only
    synchronisation in the loop. Steps attempted after reaching the end but before the next check
    have ``h = 0`` and only cost network calls (at most ``6 (check_every - 1)``).

    ``t_end``: ``process.t_floor`` by default (VP: ``1 / T``, the first training time -- the ODE drift
    is singular at ``sigma = 0``; VE lyu: ``t_eps``; VE geometric: 0 with ``sigma = sigma_min``). The
    returned sample is the denoised ``x0`` prediction at ``t_end`` (free: it comes with the last FSAL
    stage).

    ``steps`` is *not* a step count here: it is the maximum number of attempted RK steps; if the
    solver has not reached ``t_end`` by then it raises :class:`InputError` (raise ``steps`` or
    loosen ``rtol``/``atol``). NFE = ``1 + 6 * attempted steps`` (reported in the result, with the
    accepted/rejected counts in ``trajectory_info``). Deterministic: the same ``x_T`` gives the same
    sample; no random numbers are drawn after ``x_T``. ``t_spacing`` is ignored.
    """

    name = "ode"
    default_spacing = "uniform"
    nfe_per_step = 6
    deterministic = True

    def __init__(self, process, steps, rtol: float = 1e-4, atol: float = 1e-4,
                 t_end: Optional[float] = None, variable: str = "logsnr", check_every: int = 1, **kwargs):
        super().__init__(process, steps, **kwargs)
        self.rtol = check_real(rtol, "rtol", lo=0.0, lo_open=True, fix="use e.g. rtol=1e-4", what=SAMPLER_OPTION)
        self.atol = check_real(atol, "atol", lo=0.0, lo_open=True, fix="use e.g. atol=1e-4", what=SAMPLER_OPTION)
        self.check_every = check_int(check_every, "check_every", what=SAMPLER_OPTION)
        if variable not in ODE_VARIABLES:
            raise InputError(f"unknown ODE integration variable {variable!r}", f"use one of {list(ODE_VARIABLES)}")
        self.variable = variable
        if t_end is None:
            t_end = float(process.t_floor)
        t_end = check_real(t_end, "t_end", lo=float(process.t_min), hi=1.0, what=SAMPLER_OPTION)
        sig = float(process.sigma(torch.tensor(t_end, dtype=torch.float64)))
        if t_end >= 1.0 or not sig > 0.0:
            raise InputError(f"ODE end time t_end={t_end} must lie in [t_min, 1) with sigma(t_end) > 0",
                             f"leave t_end unset (default {process.t_floor:g}) or use a small positive value")
        self.t_end = t_end

    def timesteps(self) -> torch.Tensor:
        return torch.tensor([1.0, self.t_end], dtype=torch.float64)

    # position u of the integration variable <-> time t
    def _u_of_t(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.process.log_snr(t) if self.variable == "logsnr" else t

    def _t_of_u(self, u: torch.Tensor) -> torch.Tensor:
        return self.process.t_from_log_snr(2.0 * u) if self.variable == "logsnr" else u

    def _rhs(self, run: SamplingRun, x: torch.Tensor, t: torch.Tensor):
        """``(dx/du, x0_hat)`` at time ``t``: one network call."""
        proc = self.process
        pred = run.predict(x, t)
        f, g2 = proc.sde(t)
        sig = proc.sigma(t)
        if self.variable == "logsnr":
            # dx/dlambda = (dlog alpha/dlambda) x - sigma eps,  dlog alpha/dlambda = -2 f sigma^2 / g^2
            d = per_sample(-2.0 * f * sig ** 2 / g2, x) * x - per_sample(sig, x) * pred.eps
        else:
            # dx/dt = f x - 1/2 g^2 score = f x + 1/2 g^2 eps / sigma   (Lyu & Wang Eq. 32)
            d = per_sample(f, x) * x + per_sample(0.5 * g2 / sig, x) * pred.eps
        return d, pred.x0

    def _run(self, run: SamplingRun, x: torch.Tensor) -> SampleResult:
        dev = x.device
        wd = work_dtype(dev)
        t0 = torch.tensor(1.0, dtype=wd, device=dev)
        t_end = torch.tensor(self.t_end, dtype=wd, device=dev)
        u0, u_end = self._u_of_t(t0), self._u_of_t(t_end)
        u0_f, u_end_f = float(u0), float(u_end)  # before the loop: one-off reads
        span = abs(u_end_f - u0_f)
        direction = 1.0 if u_end_f > u0_f else -1.0
        b = x.shape[0]

        def rms(v: torch.Tensor) -> torch.Tensor:
            return v.reshape(b, -1).pow(2).mean(dim=1).sqrt()

        def time_at(u: torch.Tensor, at_end: torch.Tensor) -> torch.Tensor:
            return torch.where(at_end, t_end, self._t_of_u(u))

        run.check_cancel()
        u = u0
        k1, x0_cur = self._rhs(run, x, t0)
        # initial step (Hairer's first guess without the extra evaluation): 1% of |x| / |dx/du|
        scale0 = self.atol + self.rtol * x.abs()
        d0, d1 = rms(x / scale0).max(), rms(k1 / scale0).max()
        h0 = torch.where((d0 > 1e-5) & (d1 > 1e-5), 0.01 * d0 / d1.clamp_min(1e-30), torch.full_like(d0, 1e-6))
        h = direction * h0.to(wd).clamp(max=span)  # signed step in u

        n_acc = torch.zeros((), dtype=torch.int64, device=dev)
        n_idle = torch.zeros((), dtype=torch.int64, device=dev)
        attempted = 0
        false = torch.zeros((), dtype=torch.bool, device=dev)
        while True:
            if attempted >= self.steps:
                raise InputError(
                    f"the probability-flow ODE solver did not reach t={self.t_end:g} within {self.steps} RK steps",
                    "raise steps (the ODE sampler's step budget) or loosen rtol/atol",
                )
            run.check_cancel()
            rest = u_end - u  # has the sign of direction (or is 0)
            # |h| <= |rest|: never step past the end
            h = direction * torch.minimum((direction * h).clamp_min(0.0), direction * rest)
            hit = h == rest
            hx = h.to(x.dtype)
            ks = [k1]
            for i in range(1, 6):
                xi = x
                for aij, kj in zip(_A[i], ks):
                    if aij != 0.0:
                        xi = xi + (hx * aij) * kj
                ki, _ = self._rhs(run, xi, time_at(u + _C[i] * h, false))
                ks.append(ki)
            x5 = x
            for bi, ki in zip(_B5, ks):
                if bi != 0.0:
                    x5 = x5 + (hx * bi) * ki
            u_new = torch.where(hit, u_end, u + h)
            k7, x0_7 = self._rhs(run, x5, time_at(u_new, hit))
            ks.append(k7)
            err = torch.zeros_like(x)
            for ei, ki in zip(_E, ks):
                if ei != 0.0:
                    err = err + (hx * ei) * ki
            scale = self.atol + self.rtol * torch.maximum(x.abs(), x5.abs())
            err_norm = rms(err / scale).max().to(wd)
            accept = err_norm <= 1.0
            x = torch.where(accept, x5, x)
            k1 = torch.where(accept, k7, k1)
            x0_cur = torch.where(accept, x0_7, x0_cur)
            u = torch.where(accept, u_new, u)
            n_acc = n_acc + (accept & (h != 0)).to(torch.int64)
            n_idle = n_idle + (h == 0).to(torch.int64)
            factor = torch.where(err_norm > 0, 0.9 * err_norm.clamp_min(1e-30) ** -0.2,
                                 torch.full_like(err_norm, 10.0)).clamp(0.2, 10.0)
            factor = torch.where(accept, factor, factor.clamp(max=1.0))
            h = h * factor
            attempted += 1
            if attempted % self.check_every == 0 or attempted >= self.steps:
                u_host = float(u)  # the loop's only host sync
                done_frac = min(1.0, abs(u_host - u0_f) / span) if span > 0 else 1.0
                run.progress(int(round(1000 * done_frac)), 1000, x)
                if u_host == u_end_f:
                    break
        info = self._info(self.timesteps())
        n_accepted, idle = int(n_acc), int(n_idle)
        # idle_steps: h = 0 steps made after reaching t_end and before the next host check
        info.update({"t_end": self.t_end, "rtol": self.rtol, "atol": self.atol, "variable": self.variable,
                     "attempted_steps": attempted, "accepted_steps": n_accepted, "idle_steps": idle,
                     "rejected_steps": attempted - n_accepted - idle, "max_steps": self.steps})
        return SampleResult(x0=x0_cur, nfe=run.nfe, trajectory_info=info)
