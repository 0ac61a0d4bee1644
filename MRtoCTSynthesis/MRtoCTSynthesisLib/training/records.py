"""What a checkpoint should know about its own data: the training record for the input check, and the recalibration
of its Monte-Carlo std (issue 22). Both are computed here, stored in the checkpoint's metadata
(``input_record``, ``uncertainty_calibration``) by ``mrtoct export --record-data/--calibration-data`` or, for the
bundled models, ``scripts/add_input_record.py``, and read at every synthesis by :mod:`..pipeline.input_check` and
:func:`..pipeline.uncertainty.calibration_scale`.

* :func:`build_input_record`: the features of :func:`..pipeline.input_check.input_features` over the model's training
  cases (normalised intensity histogram, body size, the pixel size the network sees, slice spacing), and the
  model-based score: the mean MC std in the body when the model samples ``samples`` times the central
  ``slices`` slices of each case with its default sampler for K > 1.
* :func:`fit_calibration`: on held-out **calibration** cases (paired MR/CT, not used for training, and not the cases
  or families the calibration is then judged on), the conformal quantiles of ``r = |sCT - CT| / std`` over the body
  voxels (each case weighted equally); ``scale = q95(r) / 1.96`` makes ``sCT +- 1.96 scale std`` cover 95 % of the
  calibration voxels. The coverage of the 68 % and 95 % intervals before and after is stored with it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data.cases import load_case
from ..io.intensity import MRNormalization
from ..io.slicing import canonical_layout, to_canonical
from ..io.volume import Volume, make_geometry
from ..pipeline.input_check import input_features, summarize_features
from ..pipeline.synthesis import SynthesisOptions, synthesize
from ..pipeline.uncertainty import CALIBRATION_FORMAT, NOT_AN_UNCERTAINTY

__all__ = ["central_slab", "case_features", "build_input_record", "fit_calibration", "interval_coverage",
           "weighted_quantile",
           "Z68", "Z95"]

#: the smallest std (HU) the calibration divides by: voxels whose samples all agree (all clipped to the CT window)
#: have std 0; they then count with a very large ratio, i.e. as not covered unless their error is 0
STD_FLOOR_HU = 1e-3
#: two-sided Gaussian quantiles of the 68.27 % and 95 % intervals
Z68 = 1.0
Z95 = 1.959964


def central_slab(volume: Volume, n: int) -> Volume:
    """The ``n`` central axial (canonical S) slices of ``volume``, with the geometry that keeps every voxel's
    position (whatever the acquisition plane: the array axis that runs along S is cropped)."""
    order = canonical_layout(volume.geometry)[0]
    axis = order[0]  # numpy axis of the canonical S axis
    size = volume.array.shape[axis]
    if not n or size <= n:
        return volume
    start = (size - n) // 2
    c = 2 - axis  # ITK index axis
    g = volume.geometry
    d = np.asarray(g.direction, dtype=np.float64).reshape(3, 3)
    origin = np.asarray(g.origin, dtype=np.float64) + d[:, c] * g.spacing[c] * start
    new_size = list(g.size)
    new_size[c] = n
    arr = np.ascontiguousarray(np.take(volume.array, np.arange(start, start + n), axis=axis))
    return Volume(arr, make_geometry(new_size, g.spacing, tuple(origin), g.direction))


def case_features(mri: Volume, model) -> dict:
    """:func:`..pipeline.input_check.input_features` of ``mri`` as synthesis computes them for ``model``."""
    norm = MRNormalization.fit(mri.array, what="MRI")
    canon, layout = to_canonical(norm.apply(np.asarray(mri.array, dtype=np.float32)), mri.geometry)
    if getattr(model, "pixel_mm", None) is not None:
        pixel = float(model.pixel_mm)
    else:
        side = max(canon.shape[1] * layout.pixel_spacing[0], canon.shape[2] * layout.pixel_spacing[1])
        pixel = side / int(model.image_size)
    return input_features(canon, (canonical_layout(mri.geometry)[2][0],) + tuple(layout.pixel_spacing), pixel)


def build_input_record(model, case_folders: Sequence[Path], *, samples: int = 4, slices: int = 6, seed: int = 0,
                       device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """The training record of ``model`` (a loaded method) from its training cases (folders with an ``mr``
    volume). ``samples`` > 1 also measures the MC std level on the central ``slices`` slices of each case (not for
    SynDiff, whose spread is not an uncertainty)."""
    feats, levels, names, run = [], [], [], None
    with_std = samples > 1 and model.method not in NOT_AN_UNCERTAINTY
    for folder in case_folders:
        case = load_case(folder, partial=True)
        if case.mr is None:
            continue
        feats.append(case_features(case.mr, model))
        names.append(Path(folder).name)
        if with_std:
            res = synthesize(central_slab(case.mr, slices), model,
                             SynthesisOptions(samples=samples, seed=seed, device=device))
            levels.append(float(res.info["uncertainty"]["raw_mean_std_hu"]))
            run = {"sampler": res.info["sampler"], "steps": res.info["steps"], "samples": samples, "slices": slices}
            log(f"record: {names[-1]}: MC std {levels[-1]:.1f} HU")
        else:
            log(f"record: {names[-1]}")
    if not feats:
        raise ValueError("no case with an MRI among the record's cases")
    return summarize_features(feats, levels or None, std_run=run, cases=names)


def interval_coverage(abs_err: np.ndarray, std: np.ndarray, z: float) -> float:
    """Fraction of voxels with ``|err| <= z std``."""
    return float(np.mean(abs_err <= z * std)) if abs_err.size else math.nan


def weighted_quantile(values: Sequence[np.ndarray], q: float) -> float:
    """The ``q`` quantile of the pooled values with every array weighted equally (each case counts once)."""
    vals = np.concatenate(values)
    w = np.concatenate([np.full(v.size, 1.0 / v.size) for v in values])
    order = np.argsort(vals, kind="stable")
    cw = np.cumsum(w[order]) / w.sum()
    return float(vals[order][min(len(vals) - 1, int(np.searchsorted(cw, q)))])


def fit_calibration(model, case_folders: Sequence[Path], *, samples: int = 8, slices: int = 8, seed: int = 0,
                    device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """The recalibration of ``model``'s MC std from held-out calibration cases (paired, with a body mask), sampled
    as a default run with ``samples`` samples on the central ``slices`` slices of each case."""
    if model.method in NOT_AN_UNCERTAINTY:
        raise ValueError(f"{model.method}'s sample spread is not an uncertainty; it is not calibrated")
    if samples < 2:
        raise ValueError("calibration needs at least 2 Monte-Carlo samples")
    ratios, errs, stds, names, run = [], [], [], [], None
    for folder in case_folders:
        case = load_case(folder)
        mr, ct = central_slab(case.mr, slices), central_slab(case.ct, slices)
        mask = central_slab(case.mask, slices) if case.mask is not None else None
        res = synthesize(mr, model, SynthesisOptions(samples=samples, seed=seed, device=device))
        body = mask.array > 0 if mask is not None else np.ones(mr.array.shape, dtype=bool)
        err = np.abs(res.sct.array[body].astype(np.float64) - ct.array[body])
        std = res.std.array[body].astype(np.float64) / float(res.info["uncertainty"]["calibration_factor"])  # raw
        r = err / np.maximum(std, STD_FLOOR_HU)  # a voxel whose samples all agree (e.g. clipped) has a zero std
        ratios.append(r)
        errs.append(err)
        stds.append(std)
        names.append(Path(folder).name)
        run = {"sampler": res.info["sampler"], "steps": res.info["steps"], "samples": samples, "slices": slices}
        log(f"calibration: {names[-1]}: MAE {err.mean():.1f} HU, mean std {std.mean():.1f} HU, "
            f"95 % coverage {interval_coverage(err, std, Z95):.3f}")
    if not ratios:
        raise ValueError("no calibration cases")
    q68, q95 = weighted_quantile(ratios, 0.6827), weighted_quantile(ratios, 0.95)
    if not math.isfinite(q95) or q95 <= 0:
        raise ValueError(f"the 95 % quantile of |error| / std is {q95}: the MC std is zero on too many voxels")
    scale = q95 / Z95

    def cov(z, s):
        return {n: interval_coverage(e, s * sd, z) for n, e, sd in zip(names, errs, stds)}

    return {"format": CALIBRATION_FORMAT, "version": 1, "method": "conformal quantile of |sCT - CT| / std, 95 %",
            "scale": float(scale), "quantiles": {"0.68": float(q68), "0.95": float(q95)},
            "run": run, "cases": names,
            "coverage_before": {"68": cov(Z68, 1.0), "95": cov(Z95, 1.0)},
            "coverage_after": {"68": cov(Z68, scale), "95": cov(Z95, scale)}}
