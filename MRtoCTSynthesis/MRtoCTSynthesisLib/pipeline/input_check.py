"""Out-of-distribution check of every synthesis: is this MRI like the ones the model was trained on?

A network that never saw a contrast, an anatomy or a scale still writes a plausible-looking CT. This module compares
each input with a compact **training record** stored in the checkpoint (``metadata["input_record"]``, written by
:func:`..training.input_record.build_input_record` at export or by ``scripts/add_input_record.py`` for the bundled
models) and says, with reasons, when the input is outside it. The features (:func:`input_features`), all computed on
the MRI after the engine's own per-volume normalisation (:class:`..io.intensity.MRNormalization`) in canonical
axial order:

* ``histogram``: the normalised intensity histogram of the body (:data:`HIST_BINS` bins over [-1, 1]); compared
  with the training cases' mean histogram by the Jensen-Shannon distance (base 2, 0 = same, 1 = disjoint). It
  changes with the MR contrast (T1 vs T2 vs PD: which tissues are bright) and with the body's composition;
* ``body_mm``: the in-plane extent of the body (bounding box of the smoothed foreground, rows x cols, in mm);
* ``model_pixel_mm``: the pixel size the network sees (the checkpoint's recorded pixel size for physical-scale
  models; the square field of view / ``image_size`` for the others, whose scale changes with the field of view);
* ``slice_mm``: the slice spacing (through-plane partial volume);
* ``mc_std_hu`` (model-based; only with K > 1 Monte-Carlo samples): the mean MC std inside the body. A model
  that does not know what to make of an input usually spreads its samples more (measured in README).

The record holds, per feature, the training range (min/max over the record's cases) and for the histogram the mean
histogram and the largest training-case distance. :func:`check_input` scores each feature by how far it lies outside
its accepted range: range features accept ``[min / f, max * f]`` with the record's ``tolerance`` factor f; the
histogram accepts distances up to ``histogram_factor`` x the largest training distance (plus a floor,
:data:`MIN_HIST_LIMIT`). A feature's score is ``value / upper limit`` (or ``lower limit / value``), 1 at the limit;
the overall ``score`` is the largest, and ``in_distribution`` is ``score <= 1``. ``reasons`` names each feature
above 1 in words. Without a record (older checkpoints) ``in_distribution`` is ``None`` with a reason saying so.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np

#: histogram bins over [-1, 1] (normalised MR units)
HIST_BINS = 24
#: foreground level in normalised units (background is near -1), after smoothing each slice by SMOOTH_MM
BODY_LEVEL = -0.75
SMOOTH_MM = 4.0
#: at most this many evenly spaced slices enter the histogram and body features (large volumes stay cheap)
MAX_SLICES = 48
#: the smallest accepted histogram distance (Jensen-Shannon, base 2): noise alone moves a case this far
MIN_HIST_LIMIT = 0.08
#: defaults of a record's acceptance rule (stored in each record, so a check is reproducible from the checkpoint)
DEFAULT_TOLERANCE = 1.3
DEFAULT_HIST_FACTOR = 1.5
DEFAULT_STD_FACTOR = 1.5
RECORD_FORMAT = "mrtoct-input-record"

RANGE_FEATURES = {  # name -> (what, unit, format)
    "body_width_mm": ("body width (left-right)", "mm", ".0f"),
    "body_depth_mm": ("body depth (front-back)", "mm", ".0f"),
    "model_pixel_mm": ("pixel size the network sees", "mm", ".2f"),
    "slice_mm": ("slice spacing", "mm", ".2f"),
}


def _slice_picks(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, MAX_SLICES)).round().astype(int)) if n else np.zeros(0, int)


def body_mask(canon: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Per-voxel body mask of a normalised canonical volume (each slice smoothed by :data:`SMOOTH_MM`, then
    > :data:`BODY_LEVEL`): the voxels the histogram and the MC std level are taken over."""
    from scipy import ndimage

    sy, sx = (float(s) for s in spacing)
    out = np.zeros(canon.shape, dtype=bool)
    for z in range(canon.shape[0]):
        sl = ndimage.gaussian_filter(np.asarray(canon[z], dtype=np.float32), (SMOOTH_MM / sy, SMOOTH_MM / sx),
                                     mode="nearest")
        out[z] = sl > BODY_LEVEL
    return out


def input_features(canon: np.ndarray, spacing_zyx: tuple[float, float, float], model_pixel_mm: float) -> dict:
    """The record features of one MRI: ``canon`` is the normalised volume in canonical (S, P, L) order (model units,
    [-1, 1]), ``spacing_zyx`` its canonical spacing in mm, ``model_pixel_mm`` the pixel size the network sees."""
    picks = _slice_picks(canon.shape[0])
    sub = np.asarray(canon[picks], dtype=np.float32)
    mask = body_mask(sub, spacing_zyx[1:])
    vals = sub[mask]
    hist = np.histogram(vals, bins=HIST_BINS, range=(-1.0, 1.0))[0].astype(np.float64)
    hist = hist / hist.sum() if hist.sum() > 0 else np.full(HIST_BINS, 1.0 / HIST_BINS)
    if mask.any():
        any_fg = mask.any(axis=0)
        rows, cols = np.flatnonzero(any_fg.any(axis=1)), np.flatnonzero(any_fg.any(axis=0))
        depth = (rows[-1] - rows[0] + 1) * float(spacing_zyx[1])
        width = (cols[-1] - cols[0] + 1) * float(spacing_zyx[2])
    else:
        depth = width = 0.0
    return {"histogram": [round(float(h), 6) for h in hist], "body_width_mm": float(width),
            "body_depth_mm": float(depth), "model_pixel_mm": float(model_pixel_mm), "slice_mm": float(spacing_zyx[0]),
            "body_fraction": float(mask.mean()) if mask.size else 0.0}


def js_distance(p, q) -> float:
    """Jensen-Shannon distance (base 2; the square root of the divergence) of two histograms, in [0, 1]."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return math.sqrt(max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m)))


def summarize_features(features: list[dict], std_levels: Optional[list[float]] = None, *,
                       tolerance: float = DEFAULT_TOLERANCE, histogram_factor: float = DEFAULT_HIST_FACTOR,
                       std_factor: float = DEFAULT_STD_FACTOR, std_run: Optional[dict] = None,
                       cases: Optional[list[str]] = None) -> dict:
    """The training record from the features of its cases (:func:`input_features`) and, optionally, their mean MC
    std levels in HU (``std_run``: how they were sampled)."""
    if not features:
        raise ValueError("a training record needs at least one case")
    hists = np.array([f["histogram"] for f in features], dtype=np.float64)
    mean_hist = hists.mean(axis=0)
    dists = [js_distance(h, mean_hist) for h in hists]
    record: dict[str, Any] = {
        "format": RECORD_FORMAT, "version": 1, "cases": len(features),
        "case_names": list(cases) if cases else None,
        "histogram": {"bins": HIST_BINS, "range": [-1.0, 1.0], "mean": [round(float(v), 6) for v in mean_hist],
                      "max_distance": float(max(dists)), "mean_distance": float(np.mean(dists))},
        "ranges": {k: [float(min(f[k] for f in features)), float(max(f[k] for f in features))]
                   for k in RANGE_FEATURES},
        "rule": {"tolerance": float(tolerance), "histogram_factor": float(histogram_factor),
                 "min_histogram_limit": MIN_HIST_LIMIT, "std_factor": float(std_factor)},
    }
    if std_levels:
        record["mc_std_hu"] = {"min": float(min(std_levels)), "max": float(max(std_levels)),
                               "mean": float(np.mean(std_levels)), "run": dict(std_run or {})}
    return record


def _limits(record: Mapping, name: str) -> tuple[float, float]:
    lo, hi = record["ranges"][name]
    f = float(record.get("rule", {}).get("tolerance", DEFAULT_TOLERANCE))
    return lo / f, hi * f


def check_input(features: Mapping, record: Optional[Mapping], mc_std_hu: Optional[float] = None) -> dict:
    """``{"in_distribution", "score", "reasons", "scores", "features"}`` for one input against a training record.

    ``scores`` holds each feature's score (<= 1 inside its accepted range); ``mc_std_hu`` (mean MC std in the body,
    K > 1 only) is scored when the record has a level for it."""
    feats = {k: v for k, v in features.items() if k != "histogram"}
    if mc_std_hu is not None:
        feats["mc_std_hu"] = float(mc_std_hu)
    if not record or record.get("format") != RECORD_FORMAT:
        return {"in_distribution": None, "score": None, "scores": {}, "features": feats,
                "reasons": ["not checked: the checkpoint has no training record (add one with "
                            "scripts/add_input_record.py or `mrtoct export --record-data`)"]}
    rule = record.get("rule", {})
    scores: dict[str, float] = {}
    reasons: list[str] = []
    hist = record["histogram"]
    d = js_distance(features["histogram"], hist["mean"])
    limit = max(float(rule.get("min_histogram_limit", MIN_HIST_LIMIT)),
                float(rule.get("histogram_factor", DEFAULT_HIST_FACTOR)) * float(hist["max_distance"]))
    scores["histogram"] = d / limit
    feats["histogram_distance"] = d
    if scores["histogram"] > 1:
        reasons.append(f"the MR intensity histogram differs from the training images' (Jensen-Shannon distance "
                       f"{d:.2f}, training cases up to {hist['max_distance']:.2f}, accepted up to {limit:.2f}): "
                       "another contrast or anatomy")
    for name, (what, unit, fmt) in RANGE_FEATURES.items():
        if name not in record.get("ranges", {}) or name not in features:
            continue
        lo, hi = _limits(record, name)
        v = float(features[name])
        s = max(v / hi if hi > 0 else 0.0, lo / v if v > 0 else math.inf)
        scores[name] = s
        if s > 1:
            tlo, thi = record["ranges"][name]
            reasons.append(f"{what} {v:{fmt}} {unit} is outside the training range {tlo:{fmt}}-{thi:{fmt}} {unit} "
                           f"(accepted {lo:{fmt}}-{hi:{fmt}})")
    level = record.get("mc_std_hu")
    if mc_std_hu is not None and level:
        hi = float(level["max"]) * float(rule.get("std_factor", DEFAULT_STD_FACTOR))
        scores["mc_std_hu"] = float(mc_std_hu) / hi if hi > 0 else 0.0
        if scores["mc_std_hu"] > 1:
            reasons.append(f"the model's samples disagree more than on its training images (mean MC std "
                           f"{mc_std_hu:.0f} HU, training up to {level['max']:.0f} HU, accepted up to {hi:.0f})")
    score = max(scores.values()) if scores else 0.0
    return {"in_distribution": bool(score <= 1.0), "score": round(float(score), 4), "reasons": reasons,
            "scores": {k: round(float(v), 4) for k, v in scores.items()}, "features": feats}


def describe(check: Mapping) -> str:
    """One line for a terminal or a panel: "in distribution (score 0.62)" or the warning with its reasons."""
    if check.get("in_distribution") is None:
        return "input check: " + "; ".join(check.get("reasons") or ["not checked"])
    if check["in_distribution"]:
        return f"input check: like the training images (score {check['score']:.2f} <= 1)"
    return (f"OUT OF DISTRIBUTION (score {check['score']:.2f} > 1): " + "; ".join(check["reasons"])
            + ". The synthetic CT may be wrong without looking wrong; do not use it clinically.")
