"""Forward diffusion processes (noise schedules) in one place.

Every method of the engine sees a diffusion process through the same continuous-time view: time
``t`` runs over ``[0, 1]`` and the noisy image is

    x_t = alpha(t) * x0 + sigma(t) * eps,   eps ~ N(0, I),

the marginal of a linear forward SDE ``dx = f(t) x dt + g(t) dW`` with

    f(t)   = d log alpha / dt,
    g(t)^2 = d sigma^2 / dt - 2 f(t) sigma(t)^2.

Two families are implemented:

* :class:`VPProcess` -- the discrete DDPM chain of Lyu & Wang Eqs. 1-3 (and DDMM-Synth Eq. 1) with
  ``T`` steps (1000 in Lyu & Wang, 2000 in DDMM-Synth), embedded in continuous time so that at
  ``t = i / T`` the marginal is exactly the discrete ``q(x_i | x_0)`` of Lyu & Wang Eq. 3.
* :class:`VEProcess` -- the variance-exploding SDE with ``alpha = 1``: the schedule of Lyu & Wang
  Eqs. 26-27 (``"lyu"``) or the geometric noise scales of score-SDE (``"geometric"``).

The network predicts the noise ``eps`` for both families. For VE the score is
``s = -eps / sigma(t)`` (:meth:`DiffusionProcess.score_from_eps`). The denoising score-matching target
of Lyu & Wang Eq. 28 is ``-(x_t - x_0) / sigma(t)^2 = -eps / sigma(t)`` (with ``sigma`` the standard
deviation; see :class:`VEProcess` on the paper's variance notation), so with the weight
``lambda(t) = sigma(t)^2`` the Eq. 28 loss equals the plain eps-MSE:
``sigma^2 |s_hat + eps / sigma|^2 = |eps_hat - eps|^2``.

Numerics: schedule quantities are computed in float64 (float32 on Apple ``mps`` devices, which have no
float64) and returned in the floating dtype of the time tensor that was passed in, so samplers that
build their time grid in float64 get float64 coefficients.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ...checks import check_int, check_real, per_sample
from ...errors import InputError

__all__ = [
    "DiffusionProcess",
    "VPProcess",
    "VEProcess",
    "make_process",
    "PROCESS_KINDS",
    "T_SPACINGS",
    "NOISE_CONDITION_SCALE",
    "work_dtype",
]

#: The time spacings :meth:`DiffusionProcess.timesteps` knows.
T_SPACINGS = ("uniform", "logsnr", "quadratic")

#: how :func:`...checks.check_real` names a schedule setting in its messages
DIFFUSION_SETTING = "diffusion setting"

#: Scale of the network's time input: ``noise_condition(t) = NOISE_CONDITION_SCALE * t``.
NOISE_CONDITION_SCALE = 1000.0


def work_dtype(device: torch.device | str | None) -> torch.dtype:
    """The dtype schedule arithmetic runs in on ``device``: float64, or float32 on ``mps``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return torch.float32 if dev.type == "mps" else torch.float64


def _as_time(t: Any) -> torch.Tensor:
    """``t`` as a floating tensor (python floats become float64 CPU tensors)."""
    if isinstance(t, torch.Tensor):
        return t if t.is_floating_point() else t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


class DiffusionProcess:
    """Base class: a forward process ``x_t = alpha(t) x0 + sigma(t) eps`` on ``t in [0, 1]``.

    Subclasses implement :meth:`alpha`, :meth:`sigma`, :meth:`log_snr`, :meth:`t_from_log_snr`,
    :meth:`sde` and :meth:`prior_std`, and set ``t_min`` (the last time of a sampling grid) and
    ``t_floor`` (the smallest time with a finite log-SNR; equal to ``t_min`` unless ``sigma(t_min)``
    is 0, as for VP where ``t_floor = 1 / T``).

    All time arguments are float tensors of any shape (python floats are accepted); results broadcast
    like ``t``. Methods that combine a coefficient with an image (``q_sample``, ``x0_from_eps``...)
    accept ``t`` as a scalar or as a ``[B]`` tensor matching the batch axis of the image.
    """

    kind: str = "base"
    t_min: float = 0.0
    t_floor: float = 0.0
    t_max: float = 1.0

    # ---- schedule (implemented by subclasses) -------------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Signal scale ``alpha(t)``."""
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise scale ``sigma(t)`` (a standard deviation)."""
        raise NotImplementedError

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``2 log(alpha / sigma)``; ``+inf`` where ``sigma = 0``. Strictly decreasing in ``t``."""
        raise NotImplementedError

    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`log_snr` (clamped to ``[0, 1]``)."""
        raise NotImplementedError

    def sde(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(t), g(t)^2)`` of the forward SDE ``dx = f x dt + g dW`` (analytic derivatives)."""
        raise NotImplementedError

    def prior_std(self) -> float:
        """Standard deviation of the prior ``x_1 ~ N(0, prior_std^2 I)``."""
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        """A plain JSON-able dict that :func:`make_process` turns back into an equal process."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "DiffusionProcess":
        """Build the process from :meth:`to_config`'s dict (``kind`` must match the class)."""
        if not isinstance(config, Mapping):
            raise InputError(f"a diffusion config must be a mapping, got {type(config).__name__}",
                             "store the dict written by process.to_config()")
        cfg = dict(config)
        kind = cfg.pop("kind", cls.kind)
        if kind != cls.kind:
            raise InputError(f"diffusion config has kind {kind!r} but {cls.__name__} needs {cls.kind!r}",
                             "use make_process(config), which picks the class from 'kind'")
        allowed = cls._config_keys()
        unknown = sorted(set(cfg) - set(allowed))
        if unknown:
            raise InputError(
                f"unknown diffusion config field(s) {unknown} for kind {cls.kind!r}",
                f"use only {sorted(allowed)} (was the checkpoint written by a newer version?)",
            )
        return cls(**cfg)

    @classmethod
    def _config_keys(cls) -> tuple[str, ...]:
        raise NotImplementedError

    # ---- derived quantities ------------------------------------------------------------------
    def transition(self, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_{t|s}, sigma^2_{t|s})`` of ``q(x_t | x_s) = N(alpha_{t|s} x_s, sigma^2_{t|s} I)``, s < t.

        ``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma^2_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``.
        """
        t, s = _as_time(t), _as_time(s)
        a_ts = self.alpha(t) / self.alpha(s)
        var = self.sigma(t) ** 2 - a_ts ** 2 * self.sigma(s) ** 2
        return a_ts, var.clamp_min(0.0)

    def noise_condition(self, t: torch.Tensor) -> torch.Tensor:
        """The scalar fed to the network's time embedding: ``1000 * t`` for every process kind.

        Using continuous time (rather than a step index or ``log sigma``) for both kinds keeps one
        network interface; for VP with ``T`` steps the discrete step ``i`` enters as ``1000 i / T``.
        """
        return _as_time(t) * NOISE_CONDITION_SCALE

    def prior_sample(self, shape, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
        """Draw ``x_1`` from the prior ``N(0, prior_std^2 I)`` (VP: ``N(0, I)``; VE: ``N(0, sigma(1)^2 I)``)."""
        dtype = dtype or torch.float32
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        std = self.prior_std()
        return z if std == 1.0 else z * std

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps`` (Lyu & Wang Eq. 3 for VP, Eq. 27 for VE)."""
        t = _as_time(t)
        return per_sample(self.alpha(t), x0) * x0 + per_sample(self.sigma(t), x0) * eps

    def x0_from_eps(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x0 = (x_t - sigma eps) / alpha`` (DDMM-Synth Eq. 6)."""
        t = _as_time(t)
        return (x - per_sample(self.sigma(t), x) * eps) / per_sample(self.alpha(t), x)

    def eps_from_x0(self, x: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps = (x_t - alpha x0) / sigma`` (undefined where ``sigma = 0``)."""
        t = _as_time(t)
        return (x - per_sample(self.alpha(t), x) * x0) / per_sample(self.sigma(t), x)

    def score_from_eps(self, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score ``grad log p_t(x) = -eps / sigma(t)`` (the Gaussian-kernel gradient under Lyu & Wang Eq. 28)."""
        t = _as_time(t)
        return -eps / per_sample(self.sigma(t), eps)

    def sample_training_t(self, batch: int, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> torch.Tensor:
        """Training times ``[batch]`` (float32); see the subclasses for the distribution."""
        raise NotImplementedError

    #: grid arithmetic is done in units of ``1 / _time_unit`` (VP: discrete steps), so that grid points
    #: that fall on the discrete DDPM times are exactly ``i / T``
    _time_unit: float = 1.0
    #: round "uniform" grids to whole time units (VP: evaluate the network only at trained steps i / T)
    _integer_uniform_grid: bool = False

    def timesteps(self, steps: int, spacing: str = "uniform",
                  device: torch.device | str | None = None) -> torch.Tensor:
        """A decreasing grid of ``steps + 1`` times from ``1.0`` to ``t_min`` (float64, or float32 on mps).

        Samplers evaluate the network at the first ``steps`` times and step to the next one, so the
        last evaluation is at the second-to-last time. The points are spread between ``t = 1`` and
        ``t_floor`` (the smallest time with a finite log-SNR):

        * ``"uniform"``: equal steps in ``t``. For VP (``steps <= T``) the points are rounded to whole
          DDPM steps ``i / T`` -- the network is trained only there (discrete training times) -- like
          the integer timesteps of DDIM implementations.
        * ``"quadratic"``: ``t_floor + (1 - t_floor) u^2`` for uniform ``u`` (denser near the data).
        * ``"logsnr"``: equal steps in log-SNR (the DPM-Solver choice).

        Where ``sigma(t_min) = 0`` (VP: ``t_min = 0``, ``t_floor = 1 / T``) the first ``steps`` points
        span ``[t_floor, 1]`` and a last point ``t_min`` is appended: the last network evaluation is at
        ``t = 1 / T`` (noise ``sqrt(beta_1)``) and the final step jumps to the clean image. For VP with
        ``steps = T`` and ``"uniform"`` the grid is exactly ``T/T, (T-1)/T, ..., 1/T, 0`` (Lyu & Wang
        Table I). Otherwise (VE) ``steps + 1`` points span ``[t_min, 1]``.
        """
        steps = check_int(steps, "steps", what="sampling setting", fix="pass steps as a positive integer, e.g. 50")
        if spacing not in T_SPACINGS:
            raise InputError(f"unknown time spacing {spacing!r}", f"use one of {list(T_SPACINGS)}")
        t_min, t_floor = float(self.t_min), float(self.t_floor)
        open_end = t_floor > t_min  # log-SNR is infinite at t_min
        m = steps if open_end else steps + 1  # points spread over [t_floor, 1]
        if m < 2:
            grid = torch.tensor([1.0, t_min], dtype=torch.float64)
        else:
            k = torch.arange(m - 1, -1, -1, dtype=torch.float64)  # m-1, ..., 0
            unit = float(self._time_unit)
            lo, hi = t_floor * unit, unit
            if spacing == "uniform":
                pos = lo + (hi - lo) * k / (m - 1)
                if self._integer_uniform_grid and hi - lo >= m - 1:  # spacing >= 1 unit: no duplicates
                    pos = torch.round(pos)
                grid = pos / unit
            elif spacing == "quadratic":
                grid = (lo + (hi - lo) * (k / (m - 1)) ** 2) / unit
            else:
                lam_lo = float(self.log_snr(torch.tensor(1.0, dtype=torch.float64)))
                lam_hi = float(self.log_snr(torch.tensor(t_floor, dtype=torch.float64)))
                lam = torch.linspace(lam_lo, lam_hi, m, dtype=torch.float64)
                grid = self.t_from_log_snr(lam)
            grid[0] = 1.0
            grid[-1] = t_floor
            if open_end:
                grid = torch.cat([grid, torch.tensor([t_min], dtype=torch.float64)])
        grid[-1] = t_min
        return grid.to(device=device or "cpu", dtype=work_dtype(device))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "kind")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DiffusionProcess) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_config().items())))


class VPProcess(DiffusionProcess):
    """Variance-preserving DDPM schedule (Lyu & Wang Eqs. 1-3, Table I; DDMM-Synth Eq. 1).

    Discrete betas ``beta_1..beta_T`` (``"linear"``: evenly spaced from ``beta_start`` to ``beta_end``
    as in DDPM; ``"cosine"``: the improved-DDPM cosine schedule with offset ``cosine_s`` and betas
    capped at 0.999), ``alpha_bar_i = prod_{j<=i} (1 - beta_j)``.

    Continuous time: ``log alpha_bar(t)`` is the piecewise-linear interpolation of the discrete values
    at ``t_i = i / T`` (``alpha_bar(0) = 1``), and ``alpha(t) = sqrt(alpha_bar)``,
    ``sigma(t) = sqrt(1 - alpha_bar)``. So at ``t = i / T`` the marginal is exactly the discrete one,
    and between grid points the SDE has piecewise-constant
    ``f = T/2 log(1 - beta_i)`` and ``g^2 = -T log(1 - beta_i)`` (~ ``T beta_i``, the familiar
    ``beta(t)`` of the VP-SDE). ``t_min = 0`` (``sigma = 0``); ``t_floor = 1 / T``.

    Training times: ``t = i / T`` with ``i`` uniform on ``{1..T}`` (Lyu & Wang Table I, Algorithm 1).
    """

    kind = "vp"
    SCHEDULES = ("linear", "cosine")

    def __init__(self, schedule: str = "linear", T: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02, cosine_s: float = 0.008):
        if schedule not in self.SCHEDULES:
            raise InputError(f"unknown VP schedule {schedule!r}", f"use one of {list(self.SCHEDULES)}")
        self.T = check_int(T, "T", what=DIFFUSION_SETTING,
                           fix="use the number of training steps, e.g. 1000 (Lyu & Wang) or 2000 (DDMM-Synth)")
        self.schedule = schedule
        self.beta_start = check_real(beta_start, "beta_start", lo=0.0, hi=1.0, lo_open=True, hi_open=True,
                                     what=DIFFUSION_SETTING)
        self.beta_end = check_real(beta_end, "beta_end", lo=0.0, hi=1.0, lo_open=True, hi_open=True,
                                   what=DIFFUSION_SETTING)
        if self.beta_end < self.beta_start:
            raise InputError(f"beta_end ({beta_end}) is smaller than beta_start ({beta_start})",
                             "use an increasing schedule, e.g. beta_start=1e-4, beta_end=0.02")
        self.cosine_s = check_real(cosine_s, "cosine_s", lo=0.0, lo_open=True, what=DIFFUSION_SETTING)
        self.betas = self._make_betas()  # float64 [T]
        log1m = torch.log1p(-self.betas)
        self._log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(log1m, 0)])
        self.alphas_cumprod = torch.exp(self._log_ab[1:])  # float64 [T], alpha_bar_1..alpha_bar_T
        self.t_min = 0.0
        self.t_floor = 1.0 / self.T
        self._time_unit = float(self.T)
        self._integer_uniform_grid = True
        self._cache: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _make_betas(self) -> torch.Tensor:
        T = self.T
        if self.schedule == "linear":
            return torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64)
        i = torch.arange(T + 1, dtype=torch.float64)
        fcos = torch.cos((i / T + self.cosine_s) / (1.0 + self.cosine_s) * math.pi / 2) ** 2
        ab = fcos / fcos[0]
        return (1.0 - ab[1:] / ab[:-1]).clamp(max=0.999)

    @classmethod
    def _config_keys(cls) -> tuple[str, ...]:
        return ("schedule", "T", "beta_start", "beta_end", "cosine_s")

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "schedule": self.schedule, "T": self.T,
                "beta_start": self.beta_start, "beta_end": self.beta_end, "cosine_s": self.cosine_s}

    # grid of log alpha_bar (T+1 values) and its negation on a device, cached
    def _grid(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), dtype)
        g = self._cache.get(key)
        if g is None:
            la = self._log_ab.to(device=device, dtype=dtype)
            g = (la, (-la).contiguous())
            self._cache[key] = g
        return g

    def _log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        t = _as_time(t)
        wd = work_dtype(t.device)
        la, _ = self._grid(t.device, wd)
        u = t.to(wd).clamp(0.0, 1.0) * self.T
        i0 = u.floor().clamp(0, self.T - 1)
        frac = u - i0
        i0 = i0.long()
        return la[i0] + frac * (la[i0 + 1] - la[i0])

    def alpha(self, t):
        t = _as_time(t)
        return torch.exp(0.5 * self._log_alpha_bar(t)).to(t.dtype)

    def sigma(self, t):
        t = _as_time(t)
        return torch.sqrt(torch.expm1(self._log_alpha_bar(t)).abs()).to(t.dtype)

    def log_snr(self, t):
        t = _as_time(t)
        la = self._log_alpha_bar(t)
        return (la - torch.log(-torch.expm1(la))).to(t.dtype)

    def t_from_log_snr(self, lam):
        lam = _as_time(lam)
        wd = work_dtype(lam.device)
        _, neg = self._grid(lam.device, wd)
        # log_snr = L - log(1 - e^L)  <=>  e^L = sigmoid(lam)
        v = -torch.nn.functional.logsigmoid(lam.to(wd))
        idx = torch.searchsorted(neg, v.contiguous())
        seg = (idx - 1).clamp(0, self.T - 1)
        lo, hi = neg[seg], neg[seg + 1]
        frac = ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
        return ((seg.to(wd) + frac) / self.T).clamp(0.0, 1.0).to(lam.dtype)

    def transition(self, t, s):
        t, s = _as_time(t), _as_time(s)
        d = self._log_alpha_bar(t) - self._log_alpha_bar(s)  # log(alpha_bar_t / alpha_bar_s) <= 0
        return torch.exp(0.5 * d).to(t.dtype), (-torch.expm1(d)).clamp_min(0.0).to(t.dtype)

    def sde(self, t):
        """Piecewise-constant ``f = T/2 log(1 - beta_i)``, ``g^2 = -T log(1 - beta_i)``.

        On a grid point ``t = i / T`` the segment below it (``beta_i``) is used, the one a reverse step
        from ``t`` walks through.
        """
        t = _as_time(t)
        wd = work_dtype(t.device)
        la, _ = self._grid(t.device, wd)
        u = t.to(wd).clamp(0.0, 1.0) * self.T
        seg = (torch.ceil(u - 1e-4) - 1).clamp(0, self.T - 1).long()
        dlog = (la[seg + 1] - la[seg]) * self.T  # d log alpha_bar / dt
        return (0.5 * dlog).to(t.dtype), (-dlog).to(t.dtype)

    def prior_std(self) -> float:
        return 1.0

    def sample_training_t(self, batch, generator=None, device=None):
        i = torch.randint(1, self.T + 1, (int(batch),), generator=generator, device=device)
        return i.to(torch.float32) / self.T


class VEProcess(DiffusionProcess):
    """Variance-exploding SDE, ``alpha = 1`` (Lyu & Wang Eqs. 26-27; score-SDE VE).

    * ``"lyu"``: ``g(t) = s^t`` with ``s = sigma`` (Lyu & Wang Eq. 26) and
      ``sigma(t)^2 = (s^(2t) - 1) / (2 ln s)`` (so that ``d sigma^2 / dt = g^2`` and ``sigma(0) = 0``).
      Lyu & Wang Eq. 27 and their Algorithms 2-4 write the perturbation kernel as
      ``N(x0, sigma(t) I)`` with the square root already inside ``sigma(t)``; the quantity in the
      covariance slot is the *variance* ``sigma(t)^2`` -- here ``sigma(t)`` is always the standard
      deviation. ``t_min = t_floor = t_eps`` (``sigma(0) = 0`` would make the score undefined).
    * ``"geometric"``: ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (score-SDE's VE-SDE),
      ``g^2 = 2 sigma^2 ln(sigma_max / sigma_min)``; ``t_min = 0`` with ``sigma(0) = sigma_min``.

    Prior: ``N(0, sigma(1)^2 I)`` (Lyu & Wang approximate ``N(x0, ...)`` by a zero-mean Gaussian).
    Training times: ``U(t_eps, 1)``. The network predicts ``eps``; the score is ``-eps / sigma(t)`` and
    the eps-MSE equals Lyu & Wang Eq. 28 with ``lambda(t) = sigma(t)^2``.
    """

    kind = "ve"
    SCHEDULES = ("lyu", "geometric")

    def __init__(self, schedule: str = "lyu", sigma: float = 25.0, sigma_min: float = 0.01,
                 sigma_max: float = 50.0, t_eps: float = 1e-3):
        if schedule not in self.SCHEDULES:
            raise InputError(f"unknown VE schedule {schedule!r}", f"use one of {list(self.SCHEDULES)}")
        self.schedule = schedule
        self.sigma_base = check_real(sigma, "sigma", lo=1.0, lo_open=True,
                                     fix="use sigma > 1, e.g. 25 (Lyu & Wang)", what=DIFFUSION_SETTING)
        self.sigma_min = check_real(sigma_min, "sigma_min", lo=0.0, lo_open=True, what=DIFFUSION_SETTING)
        self.sigma_max = check_real(sigma_max, "sigma_max", lo=0.0, lo_open=True, what=DIFFUSION_SETTING)
        if self.sigma_max <= self.sigma_min:
            raise InputError(f"sigma_max ({sigma_max}) must exceed sigma_min ({sigma_min})",
                             "use e.g. sigma_min=0.01, sigma_max=50")
        self.t_eps = check_real(t_eps, "t_eps", lo=0.0, hi=1.0, lo_open=True, hi_open=True, what=DIFFUSION_SETTING)
        self._ln_s = math.log(self.sigma_base)
        self._ln_r = math.log(self.sigma_max / self.sigma_min)
        if schedule == "lyu":
            self.t_min = self.t_eps
            self.t_floor = self.t_eps
        else:
            self.t_min = 0.0
            self.t_floor = 0.0

    @classmethod
    def _config_keys(cls) -> tuple[str, ...]:
        return ("schedule", "sigma", "sigma_min", "sigma_max", "t_eps")

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "schedule": self.schedule, "sigma": self.sigma_base,
                "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_eps": self.t_eps}

    def _var(self, t: torch.Tensor) -> torch.Tensor:
        tw = t.to(work_dtype(t.device))
        if self.schedule == "lyu":
            return torch.expm1(2.0 * self._ln_s * tw) / (2.0 * self._ln_s)
        return (self.sigma_min ** 2) * torch.exp(2.0 * self._ln_r * tw)

    def alpha(self, t):
        t = _as_time(t)
        return torch.ones_like(t)

    def sigma(self, t):
        t = _as_time(t)
        return torch.sqrt(self._var(t)).to(t.dtype)

    def log_snr(self, t):
        t = _as_time(t)
        return (-torch.log(self._var(t))).to(t.dtype)

    def t_from_log_snr(self, lam):
        lam = _as_time(lam)
        lw = lam.to(work_dtype(lam.device))
        if self.schedule == "lyu":
            t = torch.log1p(2.0 * self._ln_s * torch.exp(-lw)) / (2.0 * self._ln_s)
        else:
            t = (-0.5 * lw - math.log(self.sigma_min)) / self._ln_r
        return t.clamp(0.0, 1.0).to(lam.dtype)

    def transition(self, t, s):
        t, s = _as_time(t), _as_time(s)
        return torch.ones_like(t), (self._var(t) - self._var(s)).clamp_min(0.0).to(t.dtype)

    def sde(self, t):
        """``f = 0``; ``g^2 = s^(2t)`` (Lyu & Wang Eq. 26) or ``2 sigma(t)^2 ln(sigma_max/sigma_min)``."""
        t = _as_time(t)
        tw = t.to(work_dtype(t.device))
        if self.schedule == "lyu":
            g2 = torch.exp(2.0 * self._ln_s * tw)
        else:
            g2 = 2.0 * self._ln_r * self._var(t)
        return torch.zeros_like(t), g2.to(t.dtype)

    def prior_std(self) -> float:
        return float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))

    def sample_training_t(self, batch, generator=None, device=None):
        u = torch.rand((int(batch),), generator=generator, device=device, dtype=torch.float32)
        return self.t_eps + (1.0 - self.t_eps) * u


PROCESS_KINDS = {"vp": VPProcess, "ve": VEProcess}


def make_process(config: Mapping[str, Any] | DiffusionProcess) -> DiffusionProcess:
    """Build a process from a :meth:`DiffusionProcess.to_config` dict (``{"kind": "vp"|"ve", ...}``)."""
    if isinstance(config, DiffusionProcess):
        return config
    if not isinstance(config, Mapping):
        raise InputError(f"a diffusion config must be a mapping, got {type(config).__name__}",
                         "pass a dict such as {'kind': 'vp', 'schedule': 'linear', 'T': 1000}")
    kind = config.get("kind")
    if kind not in PROCESS_KINDS:
        raise InputError(f"unknown diffusion process kind {kind!r}",
                         f"set 'kind' to one of {sorted(PROCESS_KINDS)}")
    return PROCESS_KINDS[kind].from_config(config)
