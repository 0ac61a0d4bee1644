"""Monte-Carlo uncertainty: per-pixel mean and standard deviation of K stochastic samples.

Lyu & Wang (Sec. IV-B) draw 10 samples per slice, report their average as the "-M" result and the
pixel-wise standard deviation as the uncertainty map. :class:`RunningMoments` accumulates samples as
they are produced (float64 sums of x and x^2; model-range values lie in [-1, 1], so cancellation is
negligible), so the engine never holds all K samples of a volume in memory. ``std()`` is the sample
standard deviation with Bessel's correction (ddof = 1: divide by K - 1), so that its square is an unbiased
estimate of the per-pixel sampling variance; the population std (divide by K) is low by a factor
sqrt((K - 1) / K) (x0.87 at K = 4, x0.71 at K = 2), which biased every interval built from it. For K = 1 the std is
exactly 0 (no spread can be estimated from one sample). ``std(ddof=0)`` gives the population std.
"""

from __future__ import annotations

import torch


class RunningMoments:
    """Streaming per-item mean and standard deviation for items of a fixed shape ``shape[1:]``."""

    def __init__(self, shape, device=None):
        self.count = torch.zeros(shape[0], device=device, dtype=torch.float64)
        self.sum = torch.zeros(shape, device=device, dtype=torch.float64)
        self.sum_sq = torch.zeros(shape, device=device, dtype=torch.float64)

    def update(self, index: torch.Tensor, values: torch.Tensor) -> None:
        """Add one sample ``values[b]`` to item ``index[b]`` for each b (indices may repeat)."""
        v = values.to(device=self.sum.device, dtype=torch.float64)
        index = index.to(self.sum.device)
        self.count.index_add_(0, index, torch.ones(len(index), device=self.sum.device, dtype=torch.float64))
        self.sum.index_add_(0, index, v)
        self.sum_sq.index_add_(0, index, v * v)

    def _n(self) -> torch.Tensor:
        return self.count.clamp(min=1).view(-1, *([1] * (self.sum.ndim - 1)))

    def mean(self) -> torch.Tensor:
        return self.sum / self._n()

    def std(self, ddof: int = 1) -> torch.Tensor:
        """Per-pixel standard deviation of the samples seen so far, dividing by ``K - ddof`` (default ddof = 1,
        the unbiased variance); 0 where ``K <= ddof``."""
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
        m = self.mean()
        n = self._n()
        var = (self.sum_sq / n - m * m).clamp(min=0)  # population variance
        if ddof:
            scale = torch.where(n > 1, n / (n - 1).clamp(min=1), torch.zeros_like(n))
            var = var * scale
        return var.sqrt()


# ============================================================================================ recalibration
#: the ``format`` of a checkpoint's ``metadata["uncertainty_calibration"]`` (:func:`..training.calibration.fit`)
CALIBRATION_FORMAT = "mrtoct-std-calibration"
#: methods whose MC std is not a posterior spread (SynDiff's adversarial sampler): never recalibrated, and labelled
NOT_AN_UNCERTAINTY = ("syndiff",)


def t_quantile_ratio(samples: int, fitted_samples: int, coverage: float = 0.95) -> float:
    """How much wider a ``coverage`` interval ``mean +- q std`` must be with ``samples`` Monte-Carlo samples than with
    ``fitted_samples``, for Gaussian samples: the ratio of Student-t quantiles ``t_{K-1}((1 + c) / 2)``. The MC std
    of few samples is itself uncertain, so an interval built from it needs a larger factor (x6.5 at K = 2 vs K = 8)."""
    from scipy import stats

    if samples < 2 or fitted_samples < 2:
        return 1.0
    p = 0.5 * (1.0 + coverage)
    return float(stats.t.ppf(p, samples - 1) / stats.t.ppf(p, fitted_samples - 1))


def calibration_scale(calibration: dict | None, method: str, sampler: str, steps: int, samples: int
                      ) -> tuple[float, str]:
    """``(factor, note)``: the factor the raw MC std is multiplied by, and why.

    The factor is the checkpoint's fitted ``scale`` (a conformal quantile of |error| / std on held-out calibration
    cases, :mod:`..training.calibration`) times :func:`t_quantile_ratio` for another K; 1 (with the reason) where
    it does not apply: no calibration in the checkpoint, K = 1, SynDiff (its spread is not an uncertainty), DDMM-Synth
    (the measurements change the posterior the calibration was fitted without), or a
    sampler/step count other than the one it was fitted with (the spread depends on them)."""
    if samples < 2:
        return 1.0, "one sample: no Monte-Carlo std"
    if method in NOT_AN_UNCERTAINTY:
        return 1.0, f"{method}: the sample spread is not an uncertainty estimate, so it is not recalibrated"
    if method == "ddmm_synth":
        return 1.0, ("not recalibrated: the CT measurements change the posterior, and the calibration was fitted "
                     "from the MRI alone")
    if not calibration or calibration.get("format") != CALIBRATION_FORMAT:
        return 1.0, "not recalibrated: the checkpoint has no uncertainty calibration"
    run = calibration.get("run", {})
    if run.get("sampler") != sampler or int(run.get("steps", -1)) != int(steps):
        return 1.0, (f"not recalibrated: the calibration was fitted with {run.get('sampler')} {run.get('steps')} "
                     f"steps, this run used {sampler} {steps} (drop --sampler/--steps to use it)")
    fitted_k = int(run.get("samples", samples))
    factor = float(calibration["scale"]) * t_quantile_ratio(samples, fitted_k)
    note = f"recalibrated: raw MC std x {factor:.3f} (fitted scale {float(calibration['scale']):.3f} at K = {fitted_k}"
    note += ")" if fitted_k == samples else f", x {factor / float(calibration['scale']):.3f} for K = {samples})"
    return factor, note
