"""The one range check and the one per-sample broadcast (checks.py) that the schedules, samplers and methods share."""

import math

import pytest
import torch

from MRtoCTSynthesisLib.checks import check_int, check_real, per_sample
from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.models.diffusion import VEProcess, VPProcess
from MRtoCTSynthesisLib.models.samplers import make_sampler


@pytest.mark.parametrize("value, kw, ok", [
    (0.0, dict(lo=0.0), True), (0.0, dict(lo=0.0, lo_open=True), False),
    (1.0, dict(hi=1.0), True), (1.0, dict(hi=1.0, hi_open=True), False),
    (0.5, dict(lo=0.0, hi=1.0, lo_open=True, hi_open=True), True),
    (-1e-12, dict(lo=0.0), False), (1 + 1e-12, dict(hi=1.0), False),
    (3, dict(), True), (math.inf, dict(), False), (math.nan, dict(), False), (True, dict(), False),
    ("1", dict(), False),
])
def test_check_real_bounds(value, kw, ok):
    if ok:
        assert check_real(value, "x", **kw) == float(value)
    else:
        with pytest.raises(InputError, match="'x' must be"):
            check_real(value, "x", **kw)


def test_check_messages_name_the_kind_of_setting_and_the_range():
    with pytest.raises(InputError, match=r"sampler option 'eta' must be >= 0.0 and <= 1.0, got 2"):
        make_sampler("ddim", VPProcess(), 5, eta=2)
    with pytest.raises(InputError, match=r"diffusion setting 'beta_start' must be > 0.0 and < 1.0"):
        VPProcess(beta_start=0.0)
    with pytest.raises(InputError, match=r"diffusion setting 'sigma' must be > 1.0"):
        VEProcess(sigma=1.0)
    with pytest.raises(InputError, match=r"diffusion setting 'T' must be a whole number >= 1"):
        VPProcess(T=0)
    with pytest.raises(InputError, match=r"sampler option 'corrector_steps' must be a whole number >= 0"):
        make_sampler("pc", VPProcess(), 5, corrector_steps=-1)
    assert check_int(0, "n", minimum=0) == 0
    for bad in (1.5, True, "2", -1):
        with pytest.raises(InputError):
            check_int(bad, "n", minimum=0)


def test_per_sample_shapes_like_an_explicit_view_and_keeps_values():
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    c = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float32)
    out = per_sample(c, x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == x.dtype
    # reference: the product written out sample by sample
    ref = torch.stack([float(c[i]) * x[i] for i in range(3)])
    assert torch.equal(out * x, ref)
    assert per_sample(torch.tensor(2.0), x).dim() == 0
    assert per_sample(torch.tensor([2.0]), x).shape == (1, 1, 1, 1)
    assert per_sample(0.25, x).dtype == torch.float64
    with pytest.raises(ValueError, match="batch of x"):
        per_sample(torch.ones(2), x)
    with pytest.raises(ValueError):
        per_sample(torch.ones(3, 1), x)


def test_process_and_samplers_broadcast_per_sample_times():
    """q_sample with one time per sample equals sampling each image at its own time (the old copies did this too)."""
    proc = VPProcess()
    x0, eps = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    batched = proc.q_sample(x0, t, eps)
    single = torch.cat([proc.q_sample(x0[i:i + 1], t[i], eps[i:i + 1]) for i in range(4)])
    assert torch.allclose(batched, single, atol=1e-6)
    with pytest.raises(ValueError, match="batch of x"):
        proc.q_sample(x0, t[:3], eps)
