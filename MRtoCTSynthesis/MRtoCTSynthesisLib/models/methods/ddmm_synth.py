"""DDMM-Synth: MRI-conditioned diffusion + sparse-view CT measurements (Li et al. 2023).

The prior is an ordinary MRI-conditioned diffusion model (a ``ddpm`` checkpoint, DDMM-Synth Eq. 1); the
CT measurements enter only at inference, through the null-space measurement inference (N-SMI) block
applied to every ``x0`` prediction as the samplers' ``x0_hook`` (see :mod:`..samplers.base`).

Measurements
------------
``y = A x + n`` (DDMM-Synth Eq. 2), one sinogram per axial slice on the model grid. ``A`` is the
parallel-beam projector of :mod:`..operators.radon` with ``N_p`` views uniform over 180 degrees;
``x`` is CT in the model range ``[-1, 1]``; ``y`` holds raw line integrals (model units x pixel
lengths) and the measurement noise ``sigma_meas`` (``--noise-sigma``) is the per-bin standard
deviation in those units.

Noiseless N-SMI (DDMM-Synth Eq. 5)
----------------------------------
``x0_hat = x0 - A+ (A x0 - y)``: the range-space part of the prediction is replaced by ``A+ y`` and
the null-space part (what the measurements cannot see) is kept from the MRI-guided prior. The result
satisfies ``A x0_hat = y`` up to the pseudo-inverse's regularisation, at every step, and the last step
returns it, so the final sample is consistent with the measurements. Works with every sampler (it is a
plain ``x0_hook``).

Noisy N-SMI, DDMM-Synth-noise (DDMM-Synth Eqs. 7-13)
----------------------------------------------------
With noisy data ``A+ y`` also brings ``A+ n`` into ``x0_hat``. Following the paper (and DDNM+) this is
modelled as ``A+ n ~ N(0, sigma_n^2 I)`` in the image domain, the correction is scaled,
``x0_hat = x0 - gamma_t A+ (A x0 - y)`` (Eq. 7), and the posterior step
``x_s = c_x x_t + c_t x0_hat + noise`` then already carries measurement noise of variance
``(gamma_t c_t sigma_n)^2`` (Eq. 11), so the sampler adds only ``phi_t`` of fresh noise (Eq. 12) such
that the total is the step's usual variance ``sigma_t^2`` (Eq. 13):

    gamma_t = 1,                          phi_t = sigma_t^2 - (c_t sigma_n)^2   if sigma_t >= c_t sigma_n
    gamma_t = sigma_t / (c_t sigma_n),    phi_t = 0                             otherwise,

i.e. ``gamma_t = min(1, sigma_t / (c_t sigma_n))`` and ``phi_t = sigma_t^2 - (gamma_t c_t sigma_n)^2``.
For the DDPM posterior (Eq. 9) ``c_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)`` and
``sigma_t^2 = beta~_t``; in general ``c_t`` is the coefficient of ``x0`` in the sampler's posterior mean
and ``sigma_t^2`` the variance of the noise it injects -- :class:`~..samplers.base.StepNoise`, given by
``ddpm`` (exactly Eq. 9 on the sampler's grid) and by ``ddim`` with ``eta > 0`` (``c_t = alpha_s -
alpha_t sqrt(sigma_s^2 - v) / sigma_t``, since DDIM's ``eps_hat`` is recomputed from ``x0_hat``). The
rule is what DDNM+'s two principles (Wang et al. 2022) give -- the noise in ``x_{t-1}`` stays Gaussian
with the prior's variance ``sigma_t^2``, and ``gamma_t`` stays as close to 1 as that allows. DDNM+ writes
it as
``x0_hat = x0 - Sigma_t A+ (A x0 - y)`` with ``Sigma_t = lambda_t I`` and the extra noise covariance
``Phi_t = gamma_t I``, so DDMM-Synth's ``gamma_t`` is DDNM+'s ``lambda_t`` and DDMM-Synth's ``phi_t`` is
DDNM+'s ``gamma_t`` (the letters are swapped). This module implements DDMM-Synth's form with a scalar
``gamma_t`` (DDNM+'s isotropic ``Sigma_t``); DDNM+'s time-travel trick is not part of DDMM-Synth and is
not implemented. On the last step the posterior adds no noise (``sigma_t = 0``), so ``gamma_t = 0``:
the final sample is not forced onto the noisy measurements.

The pseudo-inverse is exact (:mod:`..operators.radon`, ``pinv="svd"`` on every grid whose smaller Gram
matrix has at most 4096 rows): ``A+ A`` is a projector, as Eq. 3 assumes, so the noiseless block is exact
at ``sigma = 0``. The price is noise amplification: the exact ``A+`` divides by every non-zero singular
value, down to 1e-5 of the largest, so its image-domain noise gain ``g`` (below) is about 55 per unit bin
noise for 23 views on a 64 x 64 grid (the Tikhonov inverse used before, ``lambda = 1e-6 lambda_max``, had
1.9 but was not a projector). With noisy data both blocks as the paper writes them then fail: the
noiseless block copies the amplified noise into every ``x0``, and the noisy block's ``gamma_t`` rule
assumes ``A+ n`` is white (``N(0, sigma_n^2 I)``) while it is concentrated in the weakest singular
directions, so the prior cannot average it out (``benchmarks/README.md``, DDMM-Synth under noise).

Noise-aware block (``--nsmi auto`` with ``sigma > 0``, :class:`WienerNullSpaceProjection`)
------------------------------------------------------------------------------------------
The range-space correction is estimated rather than copied: in the SVD basis the residual
``A x0 - y = A (x0 - x) - n`` has components ``c_k = s_k e_k - n_k`` with ``e_k`` the prior's error along
``v_k``; the posterior-mean (Wiener) estimate of ``e_k`` is ``g_k c_k / s_k`` with gain
``g_k = s_k^2 tau_k^2 / (s_k^2 tau_k^2 + sigma^2)``, i.e. Tikhonov with ``lambda_k = sigma^2 / tau_k^2`` set
from the stated per-bin ``sigma`` and the prior's error scale ``tau_k``, which is estimated at every step
from the residual's power per band of 64 singular values (``E c_k^2 = s_k^2 tau_k^2 + sigma^2``; see
:meth:`~..operators.radon.RadonOperator.pinv_wiener`). Bands that do not rise above the noise get gain 0,
so whatever the data cannot resolve is left to the MRI-guided prior, and at ``sigma = 0`` every gain is 1
(the exact block). The filtered correction then goes through Eqs. 7-13 with ``sigma_n`` = the RMS of the
noise the filter lets through (per batch row), so ``gamma_t < 1`` only where that small residual noise
would exceed the step's own noise. ``--nsmi auto`` falls back to the MRI-only prior (no embedding, with a
note) when no more bands of the sinograms rise above the stated noise than pure noise would give.

Samplers: ``ddpm`` and ``ddim`` (``eta > 0``; DDMM-Synth uses 100 DDIM steps, and for the noisy block
``eta`` defaults to 1, where DDIM's step is the DDPM posterior) support the noisy block. ``dpmpp`` and
``ddim`` with ``eta = 0`` are deterministic and have no noise to trade: the rule would give
``gamma_t = 0`` (no measurement information at all), so ``--nsmi noisy`` is refused with them; ``--nsmi
auto`` then runs the Wiener-filtered correction with ``gamma_t = 1`` (or, on a geometry without an SVD,
the noiseless block with a warning).

Batches: :func:`...pipeline.synthesis.synthesize` asks :meth:`Measurements.hook_for` for each batch's
hook with the canonical slice index of every batch row (Monte-Carlo samples of a slice repeat its
index), so each row is projected onto its own slice's measurements.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ...checks import per_sample
from ...errors import InputError
from ...operators.radon import RadonOperator
from ..diffusion.process import work_dtype
from ..samplers.base import StepNoise
from .conditional_diffusion import ConditionalDiffusion
from .ddpm import ConditionalDDPM

__all__ = [
    "DDMMSynth",
    "Measurements",
    "NullSpaceProjection",
    "NoisyNullSpaceProjection",
    "WienerNullSpaceProjection",
    "nsmi_noise_schedule",
    "resolve_nsmi",
    "sampler_supports_noisy_nsmi",
    "NSMI_MODES",
    "DEFAULT_PROJECTIONS",
    "MAX_PROJECTIONS",
    "MEASUREMENT_SEED_OFFSET",
    "INFORMATIVE_MIN",
]

NSMI_MODES = ("auto", "noiseless", "noisy")
#: views used when the user gives a reference CT but no count (the DDMM-Synth table's best setting)
DEFAULT_PROJECTIONS = 23
#: more views than this is refused (10 per degree; the operator's memory grows linearly with it)
MAX_PROJECTIONS = 1800
#: --nsmi auto uses the measurements only when more than this fraction of their singular directions rises above the
#: stated noise (pure noise passes the Wiener gate in under 1 % of the bands, see ..operators.radon.WIENER_GATE)
INFORMATIVE_MIN = 0.02
#: the measurement noise uses its own generator, seeded with ``seed + MEASUREMENT_SEED_OFFSET``
MEASUREMENT_SEED_OFFSET = 1_000_003


# =========================================================================================== N-SMI
def nsmi_noise_schedule(x0_coef, variance, sigma_n_image: float):
    """DDMM-Synth Eq. 13: ``(gamma_t, phi_t)`` for a step with ``x0`` coefficient ``c_t`` and noise variance
    ``sigma_t^2 = variance``, when ``A+ n`` has image-domain std ``sigma_n_image``.

    ``gamma_t = min(1, sigma_t / (c_t sigma_n))`` and ``phi_t = sigma_t^2 - (gamma_t c_t sigma_n)^2``, so
    the measurement part plus the extra part is exactly ``sigma_t^2``, ``gamma_t`` lies in ``[0, 1]`` (0
    only when ``sigma_t = 0``) and ``phi_t >= 0``. ``sigma_n_image = 0`` gives ``(1, sigma_t^2)`` (the
    noiseless block with the usual noise). ``sigma_n_image`` may be a ``[B]`` tensor (one value per batch row,
    as the Wiener-filtered block has); the results then are ``[B]`` too. Accepts numbers (returned as float64
    CPU tensors) or tensors (returned on ``x0_coef``'s device, in float64 -- float32 on ``mps`` -- so that a
    sampling loop on a GPU never waits for a host round-trip here).
    """
    c = torch.as_tensor(x0_coef).detach()
    dev = c.device
    wd = work_dtype(dev)
    c = c.to(dev, wd).abs()
    var = torch.as_tensor(variance).detach().to(dev, wd).clamp_min(0.0)
    sig_n = sigma_n_image.detach().to(dev, wd) if isinstance(sigma_n_image, torch.Tensor) else float(sigma_n_image)
    meas = c * sig_n  # std that gamma = 1 would bring
    sig = var.sqrt()
    full = sig >= meas
    gamma = torch.where(full, torch.ones_like(sig), sig / torch.where(meas > 0, meas, torch.ones_like(meas)))
    phi = torch.where(full, (var - meas ** 2).clamp_min(0.0), torch.zeros_like(var))
    return gamma, phi


class NullSpaceProjection:
    """Noiseless N-SMI hook, DDMM-Synth Eq. 5: ``x0 -> x0 - A+ (A x0 - y)``.

    ``y``: the sinograms of the batch rows, ``[B, 1, N_p, n_det]`` (or ``[B, N_p, n_det]``) on the
    operator's device. Called by the samplers as ``hook(x0, x_t, t)`` with ``x0`` ``[B, 1, H, W]``.
    """

    mode = "noiseless"

    def __init__(self, operator: RadonOperator, y: torch.Tensor):
        self.operator = operator
        y = y.to(device=operator.device, dtype=operator.dtype)
        self.y = y if y.dim() == 4 else y[:, None]

    def correction(self, x0: torch.Tensor) -> torch.Tensor:
        """``A+ (A x0 - y)``, the range-space error of ``x0`` (full precision, autocast off)."""
        op = self.operator
        if x0.shape[0] != self.y.shape[0]:
            raise ValueError(f"the N-SMI hook has {self.y.shape[0]} sinograms but the batch has {x0.shape[0]} images")
        with torch.autocast(device_type=x0.device.type, enabled=False):
            x = x0.to(op.dtype)
            return op.pinv(op.forward(x) - self.y)

    def __call__(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x0 - self.correction(x0).to(x0.dtype)).to(x0.dtype)


class NoisyNullSpaceProjection(NullSpaceProjection):
    """DDMM-Synth-noise hook (Eqs. 7-13): scaled correction and noise composition.

    ``sigma_n_image``: image-domain std of ``A+ n`` (see the module docstring). With a sampler that
    describes its steps (:class:`~..samplers.base.StepNoise`: ``ddpm``, ``ddim`` with ``eta > 0``) the
    sampler calls :meth:`compose_noise`; any other caller gets the noiseless projection (``gamma = 1``).
    ``history`` records ``(t, c_t, sigma_t^2, gamma_t, phi_t)`` of every composed step.
    """

    mode = "noisy"

    def __init__(self, operator: RadonOperator, y: torch.Tensor, sigma_n_image: float, record: bool = False):
        super().__init__(operator, y)
        self.sigma_n_image = float(sigma_n_image)
        self.history: Optional[list] = [] if record else None

    def compose_noise(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, step: StepNoise):
        gamma, phi = nsmi_noise_schedule(step.x0_coef, step.variance, self.sigma_n_image)
        if self.history is not None:
            self.history.append(tuple(float(v) for v in (step.t, step.x0_coef, step.variance, gamma, phi)))
        g = per_sample(gamma, x0)
        x0_hat = x0 - g * self.correction(x0).to(x0.dtype)
        return x0_hat, phi.to(device=x0.device, dtype=x0.dtype)


class WienerNullSpaceProjection(NoisyNullSpaceProjection):
    """The noise-aware N-SMI block of ``--nsmi auto`` with noisy measurements: DDMM-Synth Eqs. 7-13 with the
    exact ``A+`` replaced by the per-band empirical Wiener inverse of
    :meth:`~...operators.radon.RadonOperator.pinv_wiener` (per-bin noise ``noise_sigma``).

    ``x0_hat = x0 - gamma_t W (A x0 - y)``: ``W`` keeps, band by band of singular values, only the part of the
    residual that rises above the measurement noise (the prior's error along those directions, estimated
    from the residual itself), so a direction the data cannot resolve is left to the MRI-guided prior. The
    image-domain ``sigma_n`` of Eqs. 8-13 is the per-row RMS of the noise ``W`` lets through (reported by
    ``pinv_wiener``), so ``gamma_t`` and ``phi_t`` follow Eq. 13 per batch row. With a sampler that does not
    describe its steps (deterministic ones) the hook applies ``W`` with ``gamma_t = 1``.
    """

    mode = "wiener"

    def __init__(self, operator: RadonOperator, y: torch.Tensor, noise_sigma: float, record: bool = False):
        super().__init__(operator, y, 0.0, record)
        self.noise_sigma = float(noise_sigma)

    def filtered(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W (A x0 - y), sigma_n per row)`` (full precision, autocast off)."""
        op = self.operator
        if x0.shape[0] != self.y.shape[0]:
            raise ValueError(f"the N-SMI hook has {self.y.shape[0]} sinograms but the batch has {x0.shape[0]} images")
        with torch.autocast(device_type=x0.device.type, enabled=False):
            corr, noise = op.pinv_wiener(op.forward(x0.to(op.dtype)) - self.y, self.noise_sigma)
        return corr, noise.reshape(-1)

    def correction(self, x0: torch.Tensor) -> torch.Tensor:
        return self.filtered(x0)[0]

    def compose_noise(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, step: StepNoise):
        corr, sigma_n = self.filtered(x0)
        gamma, phi = nsmi_noise_schedule(step.x0_coef, step.variance, sigma_n)
        if self.history is not None:
            self.history.append((float(step.t), float(step.x0_coef), float(step.variance),
                                 float(gamma.mean()), float(phi.mean())))
        x0_hat = x0 - per_sample(gamma, x0) * corr.to(x0.dtype)
        return x0_hat, phi.to(device=x0.device, dtype=x0.dtype)


# ==================================================================================== measurements
@dataclass
class Measurements:
    """One sinogram per canonical axial slice, on the model grid of a checkpoint.

    ``sinograms``: ``[n_slices, 1, N_p, n_det]`` on ``operator.device`` (slice order of
    :func:`..slicing.to_canonical`: inferior to superior). ``noise_sigma``: per-bin std of the noise in
    them (model units x pixel lengths). ``source``: ``"ct"`` (simulated) or ``"sinogram"`` (a file).
    """

    sinograms: torch.Tensor
    operator: RadonOperator
    noise_sigma: float = 0.0
    source: str = "ct"
    details: dict = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return int(self.sinograms.shape[0])

    @property
    def n_projections(self) -> int:
        return self.operator.n_projections

    @property
    def sigma_n_image(self) -> float:
        """The image-domain ``sigma_n`` of DDMM-Synth Eqs. 8-13 (``noise_sigma`` x the operator's gain)."""
        return self.noise_sigma * self.operator.pinv_noise_gain() if self.noise_sigma > 0 else 0.0

    def hook_for(self, mode: str) -> Callable[[np.ndarray], NullSpaceProjection]:
        """the per-batch hook factory of :func:`...pipeline.synthesis.synthesize`: slice indices -> a hook for that
        batch (``mode``: ``noiseless``, ``noisy`` or ``wiener``)."""
        if mode not in ("noiseless", "noisy", "wiener"):
            raise ValueError(f"mode must be 'noiseless', 'noisy' or 'wiener', got {mode!r}")
        sigma = self.sigma_n_image if mode == "noisy" else 0.0

        def factory(indices):
            idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.sinograms.device)
            y = self.sinograms.index_select(0, idx)
            if mode == "wiener":
                return WienerNullSpaceProjection(self.operator, y, self.noise_sigma)
            return NoisyNullSpaceProjection(self.operator, y, sigma) if mode == "noisy" \
                else NullSpaceProjection(self.operator, y)

        return factory

    def informative_fraction(self) -> float:
        """Fraction of the measurements' singular directions (over all slices) in which the sinograms rise above
        the stated noise (non-zero gain of :meth:`~...operators.radon.RadonOperator.wiener_gains`): 1 without
        noise, 0 when the data cannot be told apart from noise. NaN when the operator has no SVD."""
        if self.noise_sigma <= 0:
            return 1.0
        if self.operator.method != "svd":
            return math.nan
        gains = self.operator.wiener_gains(self.sinograms, self.noise_sigma)
        return float((gains > 0).double().mean())

    def to_volume_array(self) -> np.ndarray:
        """The sinograms as a ``(n_slices, N_p, n_det)`` float32 array (the ``--sinogram`` file layout)."""
        return self.sinograms[:, 0].detach().float().cpu().numpy()


def check_noise_sigma(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) or value < 0:
        raise InputError(f"--noise-sigma must be a finite number >= 0, got {value!r}.",
                         "use 0 for noiseless measurements, or a per-bin standard deviation such as 0.1 "
                         "(model units x pixel lengths; see `mrtoct synthesize --help`).")
    return float(value)


def check_projections(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= int(value) <= MAX_PROJECTIONS:
        raise InputError(f"--projections must be a whole number between 1 and {MAX_PROJECTIONS}, got {value!r}.",
                         f"use e.g. --projections {DEFAULT_PROJECTIONS} (DDMM-Synth uses 10, 20 or 23 views over 180 "
                         f"degrees).")
    return int(value)


# ========================================================================================== method
class DDMMSynth(ConditionalDDPM):
    """A conditional diffusion prior sampled with N-SMI (the checkpoint is an ordinary ``ddpm`` one).

    Samplers: those that expose ``x0`` at every step with a posterior-form update (``ddim`` -- the paper's,
    100 steps -- ``ddpm`` and ``dpmpp``). :meth:`from_model` wraps a loaded diffusion model.
    """

    method = "ddmm_synth"
    default_sampler = "ddim"
    valid_samplers = ("ddpm", "ddim", "dpmpp")
    trainable = False  # it samples a trained ddpm checkpoint

    @classmethod
    def from_model(cls, model) -> "DDMMSynth":
        if isinstance(model, DDMMSynth):
            return model
        if not isinstance(model, ConditionalDiffusion):
            raise InputError(
                f"DDMM-Synth needs a conditional diffusion checkpoint (method 'ddpm'), but this one is "
                f"{getattr(model, 'method', type(model).__name__)!r}.",
                "use a checkpoint from `mrtoct train --method ddpm` (N-SMI works at inference only, with the "
                "diffusion model as prior), or synthesise without --ct/--sinogram.")
        wrapped = cls(model.networks, dict(model.metadata))
        wrapped.source_method = model.method
        return wrapped


def sampler_supports_noisy_nsmi(sampler) -> bool:
    """True when the sampler describes its steps as posterior draws (:meth:`~..samplers.base.Sampler.step_noise`)."""
    grid = sampler.timesteps()
    n = grid.shape[0] - 1
    if n < 1:
        return False
    return sampler.step_noise(0, n, grid[0], grid[1]) is not None


def resolve_nsmi(nsmi: str, noise_sigma: float, sampler, measurements: Optional["Measurements"] = None
                 ) -> tuple[str, list[str]]:
    """The N-SMI block to run and notes for the user: ``"noiseless"`` (Eq. 5, exact ``A+``), ``"noisy"``
    (Eqs. 7-13 with the exact ``A+``, as the paper writes it), ``"wiener"`` (:class:`WienerNullSpaceProjection`)
    or ``"prior"`` (no measurement embedding: the MRI-only prior).

    ``auto`` decides by the numbers: ``noise_sigma == 0`` -> ``noiseless`` (the exact block is exact);
    ``noise_sigma > 0`` -> ``wiener`` when the operator has its SVD (every geometry up to
    :data:`~...operators.radon.SVD_MAX` rows), with Eq. 13's ``gamma_t``/``phi_t`` when the sampler is
    stochastic and ``gamma_t = 1`` otherwise; ``prior`` (with a note) when no more singular directions of the
    sinograms rise above the stated noise than pure noise would give (:meth:`Measurements.informative_fraction`
    at most :data:`INFORMATIVE_MIN`); without an SVD
    (large geometries) ``noisy`` on a stochastic sampler, else ``noiseless`` with a note.
    ``noisy`` with a deterministic sampler is an :class:`InputError`.
    """
    if nsmi not in NSMI_MODES:
        raise InputError(f"unknown N-SMI mode {nsmi!r}.", f"use one of {', '.join(NSMI_MODES)}.")
    notes: list[str] = []
    ok = sampler_supports_noisy_nsmi(sampler)
    label = sampler.name + (f"(eta={sampler.eta:g})" if hasattr(sampler, "eta") else "")
    if nsmi == "noisy" and not ok:
        raise InputError(
            f"the noisy N-SMI block (DDMM-Synth-noise) needs a stochastic posterior sampler, but {label} is "
            "deterministic (it would ignore the measurements entirely).",
            "use --sampler ddim (eta defaults to 1 for the noisy block) or --sampler ddpm, or --nsmi noiseless.")
    if nsmi == "auto":
        if noise_sigma <= 0:
            return "noiseless", notes
        has_svd = measurements is not None and measurements.operator.method == "svd"
        if has_svd:
            if measurements.informative_fraction() <= INFORMATIVE_MIN:
                notes.append(f"--nsmi auto: at noise sigma {noise_sigma:g} per bin no direction of the sinograms "
                             "rises above the noise; the measurements are not used (MRI-only prior).")
                return "prior", notes
            return "wiener", notes
        if not ok:
            notes.append(f"--nsmi auto: {label} cannot run the noisy block, using the noiseless one; "
                         "use --sampler ddim or ddpm for DDMM-Synth-noise.")
            return "noiseless", notes
        return "noisy", notes
    if nsmi == "noisy" and noise_sigma == 0:
        notes.append("--nsmi noisy with --noise-sigma 0 is the noiseless block (gamma_t = 1).")
    return nsmi, notes
