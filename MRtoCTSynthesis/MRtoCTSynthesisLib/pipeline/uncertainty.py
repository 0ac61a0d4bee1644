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
