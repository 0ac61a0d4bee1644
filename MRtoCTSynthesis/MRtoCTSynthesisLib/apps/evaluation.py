"""Batch evaluation of trained models on test cases: comparison table, figures, uncertainty calibration.

What one run does (:func:`run_evaluation`; ``mrtoct evaluate --models ... --data ...`` and
``training/evaluate.py`` call it):

1. **Cases**: the test cases are the case folders of ``--data`` (:func:`..data.find_cases`) or the
   ``"test"`` list of a split file (:func:`..data.read_split`), optionally only the first N.
2. **Methods** (:func:`plan_methods`): every checkpoint x every sampler (``None`` = the model's default).
   For a conditional DDPM checkpoint and each projection count ``N_p`` x measurement noise ``sigma`` also a
   DDMM-Synth row: the case's own reference CT is projected with ``N_p`` parallel-beam views and embedded
   with N-SMI (Li et al. 2023, DDMM-Synth Eqs. 5 and 7-13), exactly as ``mrtoct synthesize --ct`` does
   (both call :func:`..pipeline.synthesis.synthesize` with a :class:`..pipeline.measurements.MeasurementSpec`).
   Methods with a single
   fixed sampler (SynDiff's T/k-step sampler, the one-call CNN/GAN baselines) give one row and ignore
   ``samplers``/``steps``. Each row has a **method label**, e.g. ``ddpm/dpmpp-20``,
   ``ddmm_synth/ddim-100 Np=23 σ=0.05`` or ``syndiff``.
3. **Runs**: each case is synthesised with each method by :func:`..pipeline.synthesis.synthesize` with K
   Monte-Carlo samples (the sCT is their mean and the std map their spread, as Lyu & Wang Sec. IV-B do
   with 10 samples), and scored with :func:`..metrics.evaluate` (MAE/ME in HU, PSNR, SSIM inside the body
   mask). NFE per sample and seconds per slice (wall time for all K samples of a slice) come from the run.
4. **Table** (:func:`summarize_methods`, :func:`format_markdown_table`, :func:`format_csv_table`): per method
   mean ± std across the test cases -- the way SynDiff (Tables II-IV) and DDMM-Synth (Table 1) report PSNR
   and SSIM -- plus a paired two-sided Wilcoxon signed-rank test against the best method (the highest mean
   PSNR), as SynDiff (Sec. IV) uses to assess significance.
5. **Figures**: one PNG per case, rows = methods, columns = MR | reference CT | sCT | |error| | MC std |
   zoom of the sCT on the highest-error region (the ROI box is drawn on the full images), on the axial
   slice with the most body voxels (:func:`..figures.save_method_grid_figure`).
6. **Uncertainty calibration** (:func:`calibration_stats`): for methods with K > 1 and a non-zero std map,
   the Pearson and Spearman correlation of the MC std with the absolute error inside the mask, the
   sparsification curve with its oracle and random references, and AUSE (Ilg et al., ECCV 2018); the coverage of
   the 68 % and 95 % Gaussian intervals sCT +- z std and a reliability diagram (observed vs nominal coverage, 12
   levels) per method, with the std as the engine writes it (recalibrated when the checkpoint holds a
   calibration, :mod:`..pipeline.uncertainty`). A second table (:func:`format_uncertainty_table`) gives the mean
   coverages and how many cases the input check (:mod:`..pipeline.input_check`) flagged as out of distribution.

Outputs (written atomically, only after every run finished): ``table.md``, ``table.csv``,
``results.json``, ``calibration.json``, ``calibration.png``, ``reliability.png`` and ``figures/<case>.png`` under
``out``.

The table and calibration functions are pure (numbers/arrays in, rows/strings/dicts out), so they can be
checked against independent computations.
"""

from __future__ import annotations

import csv
import io
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from scipy import stats
from scipy.ndimage import uniform_filter
from scipy.stats import rankdata

from ..data.cases import find_cases, load_case, read_split
from ..devices import autocast, resolve_device
from ..errors import InputError
from ..io.atomic import atomic_write, write_json
from ..io.slicing import canonical_layout, to_canonical
from ..models.methods import ConditionalDDPM, load_model
from ..models.methods.ddmm_synth import (
    DEFAULT_PROJECTIONS,
    DDMMSynth,
    check_noise_sigma,
    check_projections,
)
from ..pipeline.measurements import MeasurementSpec
from ..pipeline.metrics import evaluate
from ..pipeline.synthesis import SynthesisOptions, synthesize
from ..pipeline.uncertainty import NOT_AN_UNCERTAINTY
from .args import progress_printer
from .figures import save_method_grid_figure, save_reliability_figure, save_sparsification_figure

__all__ = [
    "TABLE_METRICS", "DEFAULT_FRACTIONS", "STD_DDOF",
    "EvaluationSettings", "MethodSpec",
    "select_cases", "plan_methods", "run_evaluation",
    "mean_std_across_cases", "paired_wilcoxon", "summarize_methods", "best_method",
    "format_markdown_table", "format_csv_table",
    "pearson", "spearman", "sparsification_curve", "oracle_curve", "random_curve", "ause", "calibration_stats",
    "central_body_slice", "highest_error_roi",
]

#: (key in the metric dicts, column title, direction: +1 higher is better, -1 lower is better, 0 signed)
TABLE_METRICS = (("psnr_db", "PSNR (dB)", +1), ("ssim", "SSIM", +1), ("mae_hu", "MAE (HU)", -1),
                 ("me_hu", "ME (HU)", 0))
#: the across-case standard deviation is the sample std (``ddof = 1``, numpy ``np.std(x, ddof=1)``)
STD_DDOF = 1
#: fractions of voxels removed for the sparsification curves: 0, 0.01, ..., 0.99
DEFAULT_FRACTIONS = np.round(np.arange(100) / 100.0, 2)
#: voxels per method kept (at random, seeded) for the pooled calibration curves, over all cases together
CALIBRATION_VOXEL_BUDGET = 2_000_000
DASH = "—"


# =================================================================================================== table
def mean_std_across_cases(values: Sequence[float]) -> tuple[float, float, int]:
    """``(mean, std, n)`` of the finite values (NaN/inf, e.g. PSNR = inf of a perfect case, are left out).

    ``std`` is the sample standard deviation, ``ddof = 1`` (:data:`STD_DDOF`), NaN when ``n < 2``.
    """
    a = np.asarray([float(v) for v in values], dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(a, ddof=STD_DDOF)) if a.size > STD_DDOF else math.nan
    return float(np.mean(a)), std, int(a.size)


def paired_wilcoxon(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[Optional[float], str]:
    """Two-sided Wilcoxon signed-rank test of ``a`` vs ``b`` (``{case: value}``), paired by case.

    Only cases where both values are finite are paired. Returns ``(p, "")``, or ``(None, reason)`` when the
    test is not defined: fewer than 2 paired cases, or every paired difference is zero. Computed with
    ``scipy.stats.wilcoxon`` on the differences, ``zero_method="wilcox"`` (zero differences are dropped),
    ``method="auto"`` (scipy's exact null distribution for small samples without ties or zeros, else its
    normal approximation).
    """
    cases = [c for c in a if c in b and np.isfinite(a[c]) and np.isfinite(b[c])]
    if len(cases) < 2:
        return None, f"fewer than 2 paired cases ({len(cases)})"
    d = np.asarray([float(a[c]) - float(b[c]) for c in cases], dtype=np.float64)
    if not np.any(d != 0):
        return None, "all paired differences are zero"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about small samples / ties; the p-value is still its answer
        res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto")
    p = float(res.pvalue)
    return (p, "") if math.isfinite(p) else (None, "scipy returned no p-value")


def best_method(per_case: Mapping[str, Mapping[str, Mapping[str, float]]], methods: Sequence[str] | None = None
                ) -> Optional[str]:
    """The method with the highest mean PSNR across cases (the first one on a tie; None if no PSNR is finite)."""
    methods = list(methods or per_case)
    best, best_v = None, -math.inf
    for m in methods:
        mean, _, n = mean_std_across_cases([r.get("psnr_db", math.nan) for r in per_case.get(m, {}).values()])
        if n and mean > best_v:
            best, best_v = m, mean
    return best


def summarize_methods(per_case: Mapping[str, Mapping[str, Mapping[str, float]]],
                      methods: Sequence[str] | None = None) -> list[dict]:
    """One summary row per method from ``per_case[method][case] = {psnr_db, ssim, mae_hu, me_hu, nfe,
    seconds_per_slice, ...}``.

    Row keys: ``method``, ``best`` (bool), ``cases`` (number of cases), for each metric ``m`` of
    :data:`TABLE_METRICS`: ``m_mean``, ``m_std`` (ddof = 1), ``m_n`` (finite values), ``p_m`` (Wilcoxon p
    against the best method on the same metric, None for the best itself or when undefined) and
    ``p_m_note`` (why it is None); ``nfe`` and ``s_per_slice`` (means across cases, NaN if absent).
    """
    methods = list(methods or per_case)
    best = best_method(per_case, methods)
    rows = []
    for m in methods:
        cases = per_case.get(m, {})
        row = {"method": m, "best": m == best, "cases": len(cases)}
        for key, _, _ in TABLE_METRICS:
            mean, std, n = mean_std_across_cases([r.get(key, math.nan) for r in cases.values()])
            row[f"{key}_mean"], row[f"{key}_std"], row[f"{key}_n"] = mean, std, n
            if best is None:
                p, note = None, "no method has a finite PSNR"
            elif m == best:
                p, note = None, "best method (reference of the tests)"
            else:
                p, note = paired_wilcoxon({c: r.get(key, math.nan) for c, r in cases.items()},
                                          {c: r.get(key, math.nan) for c, r in per_case[best].items()})
            row[f"p_{key}"], row[f"p_{key}_note"] = p, note
        for key, src in (("nfe", "nfe"), ("s_per_slice", "seconds_per_slice")):
            vals = [float(r[src]) for r in cases.values() if r.get(src) is not None]
            row[key] = float(np.mean(vals)) if vals else math.nan
        rows.append(row)
    return rows


def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    return f"{v:.{digits}f}"


def _fmt_mean_std(row, key, digits) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if math.isnan(mean):
        return DASH
    return _fmt(mean, digits) if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _fmt_p(p) -> str:
    if p is None:
        return DASH
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def _fmt_nfe(v) -> str:
    if v is None or math.isnan(v):
        return DASH
    return str(int(round(v))) if abs(v - round(v)) < 1e-9 else f"{v:.1f}"


_DIGITS = {"psnr_db": 2, "ssim": 4, "mae_hu": 1, "me_hu": 1}


def format_markdown_table(rows: Sequence[dict]) -> str:
    """The Markdown comparison table of :func:`summarize_methods` rows, with notes below it.

    Columns: Method, n (cases), PSNR (dB), SSIM, MAE (HU), ME (HU) as mean ± std across cases, then the
    Wilcoxon p-values ``p PSNR``, ``p SSIM``, ``p MAE``, ``p ME`` against the best method (bold), NFE
    (network evaluations per sample) and s/slice (seconds per slice for all K samples). "—" marks the best
    method's own p-values and tests that are undefined; the notes say why.
    """
    head = ["Method", "n"] + [title for _, title, _ in TABLE_METRICS] + \
           [f"p {title.split(' ')[0]}" for _, title, _ in TABLE_METRICS] + ["NFE", "s/slice"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    notes = []
    best = None
    for r in rows:
        name = f"**{r['method']}**" if r["best"] else r["method"]
        best = r["method"] if r["best"] else best
        cells = [name, str(r["cases"])] + [_fmt_mean_std(r, k, _DIGITS[k]) for k, _, _ in TABLE_METRICS]
        cells += [_fmt_p(r[f"p_{k}"]) for k, _, _ in TABLE_METRICS]
        s = r["s_per_slice"]
        cells += [_fmt_nfe(r["nfe"]), DASH if s is None or math.isnan(s) else f"{s:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
        if not r["best"]:
            undefined = sorted({r[f"p_{k}_note"] for k, _, _ in TABLE_METRICS if r[f"p_{k}"] is None})
            for why in undefined:
                which = [t.split(" ")[0] for k, t, _ in TABLE_METRICS
                         if r[f"p_{k}"] is None and r[f"p_{k}_note"] == why]
                notes.append(f"p {'/'.join(which)} of {r['method']}: {DASH} because {why}.")
    text = "\n".join(lines)
    foot = [f"mean ± std across test cases (sample std, ddof = {STD_DDOF}); metrics inside the body mask."]
    if best is not None:
        foot.append(f"p: two-sided Wilcoxon signed-rank test, paired over cases, against the best method "
                    f"**{best}** (highest mean PSNR) on the same metric; {DASH} for the best method itself.")
    foot.append("NFE: network evaluations per sample; s/slice: wall time per slice for all Monte-Carlo samples.")
    return text + "\n\n" + "\n".join(f"- {n}" for n in foot + notes) + "\n"


CSV_COLUMNS = (["method", "best", "cases"]
               + [f"{k}_{s}" for k, _, _ in TABLE_METRICS for s in ("mean", "std", "n")]
               + [f"p_{k}" for k, _, _ in TABLE_METRICS] + ["nfe", "s_per_slice", "p_notes"])


def format_uncertainty_table(per_case: Mapping[str, Mapping[str, Mapping]], methods: Sequence[str],
                             method_of: Mapping[str, str] | None = None) -> str:
    """The uncertainty and input-check table: per method, the mean over cases of the coverage of the 68 % and 95 %
    Gaussian intervals ``sCT +- z std`` (body voxels with ``|sCT - CT| <= z std``; z = 1 and 1.96; the std as the
    engine writes it, recalibrated when the checkpoint has a calibration), the mean MC std, and how many cases the
    input check flagged as out of the model's training distribution. SynDiff's spread is labelled as not an
    uncertainty."""
    lines = ["| Method | n | 68 % coverage | 95 % coverage | mean MC std (HU) | input check: out of distribution |",
             "|---|---:|---:|---:|---:|---|"]
    for m in methods:
        cases = per_case.get(m, {})

        def mean(key):
            vals = [float(r[key]) for r in cases.values() if r.get(key) is not None and math.isfinite(r[key])]
            return f"{np.mean(vals):.3f}" if vals else DASH
        std_vals = [float(r["mean_std_hu"]) for r in cases.values() if r.get("mean_std_hu") is not None
                    and math.isfinite(r["mean_std_hu"])]
        flagged = [c for c, r in cases.items() if r.get("in_distribution") is False]
        checked = [c for c, r in cases.items() if r.get("in_distribution") is not None]
        ood = f"{len(flagged)} of {len(checked)}" + (f" ({', '.join(flagged)})" if flagged else "") \
            if checked else "not checked (no training record)"
        name = m + (" (spread, not an uncertainty)" if (method_of or {}).get(m) in NOT_AN_UNCERTAINTY else "")
        lines.append(f"| {name} | {len(cases)} | {mean('coverage68')} | {mean('coverage95')} | "
                     f"{f'{np.mean(std_vals):.1f}' if std_vals else DASH} | {ood} |")
    return "\n".join(lines) + "\n\n- coverage: fraction of body voxels with |sCT - CT| <= z std (z = 1 for 68 %, " \
        "1.96 for 95 %), mean over cases; a calibrated std gives 0.68 and 0.95 (reliability.png: all levels).\n"


def format_csv_table(rows: Sequence[dict]) -> str:
    """The table as CSV (:data:`CSV_COLUMNS`): full-precision numbers, empty cells for undefined values."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        out = []
        for c in CSV_COLUMNS:
            if c == "p_notes":
                v = "; ".join(f"p_{k}: {r[f'p_{k}_note']}" for k, _, _ in TABLE_METRICS if r[f"p_{k}"] is None)
            else:
                v = r.get(c)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                v = ""
            elif isinstance(v, float):
                v = repr(v)
            out.append(v)
        w.writerow(out)
    return buf.getvalue()


# ============================================================================================ calibration
def pearson(x, y) -> float:
    """Pearson correlation of two equally long arrays (NaN when either is constant or has < 2 values)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"pearson: {x.size} vs {y.size} values")
    if x.size < 2:
        return math.nan
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float(np.dot(xc, xc)) * float(np.dot(yc, yc)))
    return float(np.dot(xc, yc) / den) if den > 0 else math.nan


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson correlation of the ranks (ties get their average rank)."""
    return pearson(rankdata(np.asarray(x).ravel()), rankdata(np.asarray(y).ravel()))


def _check_pair(uncertainty, error):
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    e = np.asarray(error, dtype=np.float64).ravel()
    if u.size != e.size or u.size == 0:
        raise ValueError(f"need equally many uncertainty and error values, got {u.size} and {e.size}")
    return u, e


def sparsification_curve(uncertainty, error, fractions=DEFAULT_FRACTIONS) -> np.ndarray:
    """Mean of ``error`` over the voxels left after removing the fraction ``f`` with the highest ``uncertainty``.

    ``floor(f n)`` voxels are removed for each ``f`` in ``fractions`` (each in ``[0, 1)``). Voxels with equal
    uncertainty are removed in no particular order, so within a tie group the curve uses the expected value
    over all orders (every voxel of the group counts with the group's mean error); the curve is therefore
    independent of how the values happen to be stored.
    """
    u, e = _check_pair(uncertainty, error)
    f = np.asarray(fractions, dtype=np.float64)
    if np.any(f < 0) or np.any(f >= 1):
        raise ValueError("fractions must lie in [0, 1)")
    n = u.size
    order = np.argsort(u, kind="stable")  # ascending: the voxels kept last are the least uncertain
    us, es = u[order], e[order]
    starts = np.flatnonzero(np.r_[True, us[1:] != us[:-1]])
    counts = np.diff(np.r_[starts, n])
    es = np.repeat(np.add.reduceat(es, starts) / counts, counts)
    csum = np.concatenate([[0.0], np.cumsum(es)])
    keep = n - np.floor(f * n + 1e-9).astype(np.int64)
    return csum[keep] / keep


def oracle_curve(error, fractions=DEFAULT_FRACTIONS) -> np.ndarray:
    """The best possible sparsification curve: voxels removed in order of their own error."""
    return sparsification_curve(error, error, fractions)


def random_curve(error, fractions=DEFAULT_FRACTIONS) -> np.ndarray:
    """The expected curve when voxels are removed at random: the overall mean error at every fraction."""
    e = np.asarray(error, dtype=np.float64).ravel()
    return np.full(len(np.asarray(fractions)), float(e.mean()))


def ause(curve, oracle, fractions=DEFAULT_FRACTIONS, mae0: float | None = None) -> float:
    """Area Under the Sparsification Error: ``integral (curve - oracle) df / MAE(f=0)`` (trapezoidal rule).

    0 for a perfect ranking of the errors; larger is worse. ``mae0`` defaults to ``curve[0]`` (the MAE of all
    voxels, when ``fractions[0] == 0``).
    """
    curve, oracle, f = (np.asarray(a, dtype=np.float64) for a in (curve, oracle, fractions))
    mae0 = float(curve[0]) if mae0 is None else float(mae0)
    if not mae0 > 0:
        return math.nan
    return float(np.trapezoid(curve - oracle, f) / mae0)


#: nominal coverages of the reliability diagram (two-sided Gaussian intervals mean +- z std)
RELIABILITY_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6827, 0.7, 0.8, 0.9, 0.95, 0.99)


def interval_z(coverage: float) -> float:
    """z of the two-sided Gaussian interval ``mean +- z std`` with this coverage (0.6827 -> 1, 0.95 -> 1.96)."""
    return float(stats.norm.ppf(0.5 * (1.0 + float(coverage))))


def coverage_of(std, abs_error, coverage: float) -> float:
    """Observed fraction of voxels with ``|error| <= z std`` for the nominal ``coverage`` (NaN without voxels)."""
    u, e = np.asarray(std, dtype=np.float64).ravel(), np.asarray(abs_error, dtype=np.float64).ravel()
    return float(np.mean(e <= interval_z(coverage) * u)) if u.size else math.nan


def reliability_curve(std, abs_error, levels=RELIABILITY_LEVELS) -> dict:
    """``{"nominal": levels, "observed": [...]}``: the reliability diagram of Gaussian intervals built from ``std``
    (a calibrated std lies on the diagonal; below it, the intervals are too narrow)."""
    return {"nominal": [float(v) for v in levels], "observed": [coverage_of(std, abs_error, v) for v in levels]}


def calibration_stats(std, abs_error, fractions=DEFAULT_FRACTIONS) -> dict:
    """Calibration of an uncertainty map ``std`` against ``abs_error`` (same voxels, e.g. inside the mask).

    Returns ``voxels``, ``pearson``, ``spearman``, ``mae0`` (mean error of all voxels), ``coverage68`` /
    ``coverage95`` (:func:`coverage_of`), ``reliability`` (:func:`reliability_curve`), ``fractions``,
    ``curve`` (:func:`sparsification_curve` by ``std``), ``oracle`` (:func:`oracle_curve`), ``random``
    (:func:`random_curve`), ``ause`` (:func:`ause`, normalised by ``mae0``) and ``aurg`` (area between the
    random and the model curve, normalised the same way: > 0 when the std ranks errors better than chance).
    """
    u, e = _check_pair(std, abs_error)
    f = np.asarray(fractions, dtype=np.float64)
    curve, orc, rnd = sparsification_curve(u, e, f), oracle_curve(e, f), random_curve(e, f)
    mae0 = float(e.mean())
    return {
        "voxels": int(u.size), "pearson": pearson(u, e), "spearman": spearman(u, e), "mae0": mae0,
        "coverage68": coverage_of(u, e, 0.6827), "coverage95": coverage_of(u, e, 0.95),
        "reliability": reliability_curve(u, e),
        "fractions": f.tolist(), "curve": curve.tolist(), "oracle": orc.tolist(), "random": rnd.tolist(),
        "ause": ause(curve, orc, f, mae0),
        "aurg": float(np.trapezoid(rnd - curve, f) / mae0) if mae0 > 0 else math.nan,
    }


# ============================================================================================ figure helpers
def central_body_slice(mask_canonical: np.ndarray | None, n_slices: int | None = None) -> int:
    """The canonical axial slice with the most mask voxels (ties: the one nearest the middle); the middle
    slice without a mask or with an empty one."""
    if mask_canonical is None or not np.any(mask_canonical):
        return int((n_slices if n_slices is not None else mask_canonical.shape[0]) // 2)
    counts = (np.asarray(mask_canonical) > 0).reshape(mask_canonical.shape[0], -1).sum(axis=1)
    top = np.flatnonzero(counts == counts.max())
    mid = (mask_canonical.shape[0] - 1) / 2
    return int(top[np.argmin(np.abs(top - mid))])


def highest_error_roi(error_maps: Sequence[np.ndarray], mask: np.ndarray | None = None,
                      pixel_spacing=(1.0, 1.0), fraction: float = 0.3) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)``: a box about ``fraction`` of the slice's shorter physical side (square in mm),
    placed where the mean of the |error| maps (inside ``mask``), averaged over the box, is largest."""
    err = np.mean([np.abs(np.asarray(m, dtype=np.float64)) for m in error_maps], axis=0)
    if mask is not None and np.any(mask):
        err = np.where(np.asarray(mask) > 0, err, 0.0)
    h, w = err.shape
    sy, sx = pixel_spacing
    side_mm = fraction * min(h * sy, w * sx)
    bh = int(min(h, max(4, round(side_mm / sy))))
    bw = int(min(w, max(4, round(side_mm / sx))))
    score = uniform_filter(err, size=(bh, bw), mode="constant")
    r, c = np.unravel_index(int(np.argmax(score)), score.shape)
    r0 = int(np.clip(r - bh // 2, 0, h - bh))
    c0 = int(np.clip(c - bw // 2, 0, w - bw))
    return r0, r0 + bh, c0, c0 + bw


# ================================================================================================ the run
@dataclass
class EvaluationSettings:
    """Everything :func:`run_evaluation` needs (the CLI flags of ``mrtoct evaluate --models``)."""

    models: list
    data: Path
    out: Path = Path("mrtoct_evaluation")
    split: Optional[Path] = None
    samplers: list = field(default_factory=lambda: [None])   # None = the model's default
    steps: Optional[int] = None
    samples: int = 1
    projections: list = field(default_factory=list)            # DDMM-Synth N_p values ([] = no DDMM rows)
    noise_sigmas: list = field(default_factory=list)           # DDMM-Synth per-bin sigma ([] = [0.0])
    cases: Optional[int] = None                                # first N test cases
    figure_cases: Optional[int] = None                         # figures for the first N cases (None = all)
    device: str = "auto"
    seed: int = 0
    batch_size: Optional[int] = None
    precision: str = "auto"
    metrics: str = "default"                                   # metric preset (pipeline.metrics.evaluate)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else [str(x) if isinstance(x, Path) else x for x in v]
                    if isinstance(v, list) else v) for k, v in self.__dict__.items()}


@dataclass
class MethodSpec:
    """One row of the table: a checkpoint, a sampler and (for DDMM-Synth) the measurement setting."""

    label: str
    model_path: Path
    method: str                      # the checkpoint's method
    sampler: Optional[str]           # None = the model's default
    steps: Optional[int]
    samples: int
    projections: Optional[int] = None
    noise_sigma: Optional[float] = None

    @property
    def ddmm(self) -> bool:
        return self.projections is not None

    def to_dict(self) -> dict:
        return {"label": self.label, "model": str(self.model_path), "checkpoint_method": self.method,
                "sampler": self.sampler, "steps": self.steps, "samples": self.samples,
                "ddmm_synth": self.ddmm, "projections": self.projections, "noise_sigma": self.noise_sigma}


def select_cases(data, split=None, limit: Optional[int] = None) -> list[Path]:
    """The test case folders: all cases of ``data``, or the ``"test"`` list of ``split``; the first ``limit``."""
    if split is not None:
        if not Path(data).is_dir():
            raise InputError(f"data folder {data} does not exist.",
                             "point --data at the folder the split file names cases in.")
        folders = read_split(split, data)["test"]
        if not folders:
            raise InputError(f"split file {split} lists no test cases.",
                             "add case names to its 'test' list, or leave --split out to evaluate every case in "
                             "--data.")
    else:
        folders = find_cases(data)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--cases must be >= 1, got {limit}.", "e.g. --cases 5, or leave it out for all cases.")
        folders = folders[:limit]
    return list(folders)


def _is_ddpm(model) -> bool:
    return isinstance(model, ConditionalDDPM)


def plan_methods(models: Mapping[Path, object], samplers: Sequence[Optional[str]], steps: Optional[int],
                 samples: int, projections: Sequence[int] = (), noise_sigmas: Sequence[float] = (),
                 notes: list | None = None) -> list[MethodSpec]:
    """The rows of the evaluation grid, validated before anything runs (an :class:`InputError` otherwise).

    ``models``: ``{checkpoint path: loaded model}``. For each model: one row per sampler (multi-sampler
    models; every listed sampler must work with the model) or one row (fixed-sampler models: SynDiff, the
    one-call baselines, which also run with K = 1 when they are deterministic); a ``ddmm_synth`` checkpoint
    gets DDMM-Synth rows only. DDMM-Synth rows (``ddpm`` and ``ddmm_synth`` checkpoints): each sampler that
    N-SMI supports x each ``N_p`` in ``projections`` (a ``ddmm_synth`` checkpoint with none: 23, the default
    of ``mrtoct synthesize --ct``) x each sigma in ``noise_sigmas`` (none: 0), checked as ``mrtoct synthesize``
    checks ``--projections``/``--noise-sigma``.
    """
    notes = notes if notes is not None else []
    samplers = list(dict.fromkeys(samplers or [None]))
    sigmas = list(dict.fromkeys(float(s) for s in noise_sigmas)) or [0.0]
    projections = list(dict.fromkeys(int(p) for p in projections))
    for n_p in projections:
        check_projections(n_p)
    for s in sigmas:
        check_noise_sigma(s)
    ddmm_capable = [p for p, m in models.items() if _is_ddpm(m)]
    if (projections or noise_sigmas) and not ddmm_capable:
        raise InputError("--projections/--noise-sigma add DDMM-Synth rows, but none of the --models is a conditional "
                         "DDPM (ddpm or ddmm_synth) checkpoint.",
                         "add a ddpm checkpoint, or leave --projections and --noise-sigma out.")
    if noise_sigmas and not projections and not any(getattr(m, "method", "") == "ddmm_synth" for m in models.values()):
        raise InputError("--noise-sigma only makes sense with DDMM-Synth rows.",
                         "add --projections N_p (e.g. 23), or drop --noise-sigma.")

    specs: list[MethodSpec] = []
    for path, model in models.items():
        method = model.method
        if len(model.valid_samplers) == 1:  # SynDiff / one-call baselines: their own fixed sampler
            if any(s not in (None, model.valid_samplers[0]) for s in samplers) or steps is not None:
                notes.append(f"{Path(path).name} ({method}) samples with its own fixed sampler "
                             f"'{model.valid_samplers[0]}'; --samplers/--steps do not apply to it.")
            k = 1 if model.valid_samplers[0] == "direct" else samples
            if k != samples:
                notes.append(f"{Path(path).name} ({method}) is deterministic: run with 1 sample instead of {samples}.")
            model.make_sampler(None, None)
            specs.append(MethodSpec(method, Path(path), method, None, None, k))
            continue
        if method != "ddmm_synth":
            for s in samplers:
                # InputError for a sampler the model does not have
                sm = model.make_sampler(s, model.steps_for(s, steps, samples))
                specs.append(MethodSpec(f"{method}/{sm.name}-{sm.steps}", Path(path), method, s, steps, samples))
        if _is_ddpm(model) and (projections or method == "ddmm_synth"):
            wrapped = DDMMSynth.from_model(model)
            usable = [s for s in samplers if s is None or s in wrapped.valid_samplers]
            for s in samplers:
                if s not in usable:
                    notes.append(f"DDMM-Synth rows of {Path(path).name}: sampler {s} is not supported by N-SMI "
                                 f"({', '.join(wrapped.valid_samplers)}); skipped.")
            if not usable:
                raise InputError(f"none of the --samplers works with DDMM-Synth (N-SMI supports "
                                 f"{', '.join(wrapped.valid_samplers)}).",
                                 "add e.g. --samplers ddim (the paper's, 100 steps) or default.")
            for s in usable:
                sm = wrapped.make_sampler(s, wrapped.steps_for(s, steps, samples))
                for n_p in projections or [DEFAULT_PROJECTIONS]:
                    for sigma in sigmas:
                        specs.append(MethodSpec(f"ddmm_synth/{sm.name}-{sm.steps} Np={n_p} σ={sigma:g}", Path(path),
                                                method, s, steps, samples, n_p, sigma))
    # labels must be unique: several checkpoints of one method get their file name appended
    seen: dict[str, int] = {}
    for sp in specs:
        seen[sp.label] = seen.get(sp.label, 0) + 1
    for sp in specs:
        if seen[sp.label] > 1:
            sp.label = f"{sp.label} [{sp.model_path.stem}]"
    labels = [sp.label for sp in specs]
    if len(set(labels)) != len(labels):
        raise InputError("the same checkpoint file name appears twice in --models.", "give each model once.")
    return specs


def _run_one(settings: EvaluationSettings, spec: MethodSpec, model, case):
    """Synthesise one case with one method, as ``mrtoct synthesize`` would (DDMM-Synth rows: measurements simulated
    from the case's own CT with ``spec.projections`` views and ``spec.noise_sigma`` per-bin noise)."""
    options = SynthesisOptions(sampler=spec.sampler, steps=spec.steps, samples=spec.samples, seed=settings.seed,
                               device=settings.device, batch_size=settings.batch_size, precision=settings.precision)
    measurements = MeasurementSpec(ct=case.ct, projections=spec.projections, noise_sigma=spec.noise_sigma or 0.0) \
        if spec.ddmm else None
    return synthesize(case.mr, model, options, measurements=measurements, progress=progress_printer())


def _warm_up(model, settings: EvaluationSettings) -> None:
    """One untimed pass on a blank slice with the model's default sampler (1 step where steps can be chosen), so
    one-time costs (CUDA context, cuDNN autotuning, lazy initialisation) do not land in the first row's s/slice."""
    device = resolve_device(settings.device)
    model.to(device)
    sampler = model.make_sampler(None, None if len(model.valid_samplers) == 1 else 1)
    cond = torch.zeros(1, model.in_channels, model.image_size, model.image_size, device=device)
    with torch.no_grad(), autocast(device, settings.precision):
        model.sample(cond, sampler, generator=torch.Generator(device=device).manual_seed(0))


def _canonical(volume):
    return None if volume is None else to_canonical(volume.array, volume.geometry)[0]


def run_evaluation(settings: EvaluationSettings, log: Callable[[str], None] = print) -> dict:
    """Run the whole grid and write the outputs; returns ``{"rows", "markdown", "files", "results", "calibration"}``.

    Everything is validated before the first synthesis (cases, checkpoints, samplers, DDMM-Synth settings,
    the output folder); outputs are written only after every run finished, each file atomically.
    """
    # ------------------------------------------------------------------ validate everything first
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder.", "choose a folder for the evaluation outputs.")
    if settings.samples < 1:
        raise InputError(f"--samples must be >= 1, got {settings.samples}.",
                         "e.g. --samples 10 (Lyu & Wang's MC count).")
    if not settings.models:
        raise InputError("no models to evaluate.", "pass --models A.safetensors [B.safetensors ...].")
    paths = [Path(p) for p in settings.models]
    for i, p in enumerate(paths):
        if p in paths[:i]:
            raise InputError(f"model {p} is listed twice in --models.", "give each checkpoint once.")
        if not p.is_file():
            raise InputError(f"model file {p} does not exist.",
                             "check the path (a .safetensors checkpoint from `mrtoct train`).")
    folders = select_cases(settings.data, settings.split, settings.cases)
    resolve_device(settings.device)
    models = {p: load_model(p) for p in paths}
    notes: list[str] = []
    specs = plan_methods(models, settings.samplers, settings.steps, settings.samples, settings.projections,
                         settings.noise_sigmas, notes)
    for n in notes:
        log(f"note: {n}")
    cases = []
    for f in folders:  # read every case once now, so a broken file stops the run before hours of sampling
        load_case(f)
        cases.append(f)
    n_fig = len(cases) if settings.figure_cases is None else min(len(cases), settings.figure_cases)
    for model in models.values():
        _warm_up(model, settings)
    log(f"evaluating {len(specs)} method(s) on {len(cases)} test case(s), {settings.samples} Monte-Carlo "
        f"sample(s) per slice: {', '.join(s.label for s in specs)}")

    # ------------------------------------------------------------------ run the grid (case-major)
    per_case: dict[str, dict[str, dict]] = {s.label: {} for s in specs}
    calib_pool: dict[str, list] = {s.label: [] for s in specs}
    calib_cases: dict[str, dict] = {s.label: {} for s in specs}
    figure_data = []
    budget = max(10_000, CALIBRATION_VOXEL_BUDGET // max(1, len(cases)))
    rng = np.random.default_rng(settings.seed)
    n_runs, done, t_start = len(specs) * len(cases), 0, time.perf_counter()
    for ci, folder in enumerate(cases):
        case = load_case(folder)
        mask_c = _canonical(case.mask)
        body_c = mask_c > 0 if mask_c is not None else None
        ref_c = _canonical(case.ct).astype(np.float64)
        z = central_body_slice(body_c, ref_c.shape[0])
        fig_rows = []
        for spec in specs:
            result = _run_one(settings, spec, models[spec.model_path], case)
            met = evaluate(result.sct, case.ct, case.mask, preset=settings.metrics)
            sct_c = _canonical(result.sct).astype(np.float64)
            std_c = _canonical(result.std).astype(np.float64)
            inside = body_c if body_c is not None else np.ones(ref_c.shape, dtype=bool)
            abs_err = np.abs(sct_c - ref_c)[inside]
            std_in = std_c[inside]
            info = result.info
            rec = {k: v for k, v in met.items()}
            check = info.get("input_check") or {}
            rec.update({"nfe": float(info["nfe_per_sample"]), "seconds": float(info["seconds"]),
                        "seconds_per_slice": float(info["seconds_per_slice"]),
                        "mean_std_hu": float(std_in.mean()) if std_in.size else math.nan,
                        "in_distribution": check.get("in_distribution"), "input_check_score": check.get("score"),
                        "run": info})
            if spec.samples > 1 and std_in.size and np.any(std_in > 0):
                rec["coverage68"] = coverage_of(std_in, abs_err, 0.6827)
                rec["coverage95"] = coverage_of(std_in, abs_err, 0.95)
            per_case[spec.label][case.name] = rec
            if spec.samples > 1 and std_in.size and np.any(std_in > 0):
                cs = calibration_stats(std_in, abs_err)
                calib_cases[spec.label][case.name] = {k: cs[k] for k in ("voxels", "pearson", "spearman", "mae0",
                                                                         "ause", "aurg", "coverage68", "coverage95")}
                take = np.arange(std_in.size) if std_in.size <= budget else \
                    np.sort(rng.choice(std_in.size, budget, replace=False))
                calib_pool[spec.label].append((std_in[take], abs_err[take]))
            if ci < n_fig:
                fig_rows.append({"label": spec.label, "sct": sct_c[z], "std": std_c[z], "metrics": met})
            done += 1
            log(f"[{done}/{n_runs}] {case.name}  {spec.label}: PSNR {met['psnr_db']:.2f} dB, SSIM {met['ssim']:.4f}, "
                f"MAE {met['mae_hu']:.1f} HU, ME {met['me_hu']:+.1f} HU  ({info['seconds']:.1f} s, "
                f"{time.perf_counter() - t_start:.0f} s total)")
        if ci < n_fig:
            spacing = canonical_layout(case.mr.geometry)[2]
            figure_data.append({"case": case.name, "mr": _canonical(case.mr)[z].astype(np.float64), "ref": ref_c[z],
                                "mask": None if body_c is None else body_c[z], "rows": fig_rows, "slice": z,
                                "pixel_spacing": (spacing[1], spacing[2])})

    # ------------------------------------------------------------------ summaries
    labels = [s.label for s in specs]
    rows = summarize_methods(per_case, labels)
    markdown = format_markdown_table(rows) + "\n" + format_uncertainty_table(per_case, labels,
                                                                           {s.label: s.method for s in specs}) + (
        f"\nMetrics preset: `{settings.metrics}` (`mrtoct evaluate --metrics`; see pipeline/metrics.py).\n")
    calibration = {"fractions": DEFAULT_FRACTIONS.tolist(), "methods": {}, "skipped": {},
                   "definition": "inside the body mask; curve = MAE (HU) of the voxels left after removing the "
                                 "fraction f with the highest MC std; oracle = removing by highest |error|; "
                                 "random = expected curve for random removal; AUSE = area between curve and "
                                 "oracle / MAE(f=0); AURG = area between random and curve / MAE(f=0)"}
    for spec in specs:
        pool = calib_pool[spec.label]
        if spec.samples < 2:
            calibration["skipped"][spec.label] = "K = 1 sample: no Monte-Carlo std"
        elif not pool:
            calibration["skipped"][spec.label] = "the MC std is zero everywhere (a deterministic method)"
        else:
            u = np.concatenate([p[0] for p in pool])
            e = np.concatenate([p[1] for p in pool])
            cs = calibration_stats(u, e)
            cs["pooled_over"] = f"{len(pool)} case(s), up to {budget} random mask voxels per case"
            cs["per_case"] = calib_cases[spec.label]
            calibration["methods"][spec.label] = cs

    results = {"settings": settings.to_dict(), "cases": [Path(c).name for c in cases],
               "methods": [s.to_dict() for s in specs], "best": next((r["method"] for r in rows if r["best"]), None),
               "std_ddof": STD_DDOF, "notes": notes, "table": rows, "per_case": {
                   name: {lab: per_case[lab][name] for lab in labels} for name in (Path(c).name for c in cases)}}

    # ------------------------------------------------------------------ write (all at once, atomically)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for d in figure_data:
        (out / "figures").mkdir(exist_ok=True)
        roi = highest_error_roi([r["sct"] - d["ref"] for r in d["rows"]], d["mask"], d["pixel_spacing"])
        files[f"figures/{d['case']}.png"] = save_method_grid_figure(
            out / "figures" / f"{d['case']}.png", d["mr"], d["ref"], d["rows"], mask=d["mask"], roi=roi,
            pixel_spacing=d["pixel_spacing"],
            title=f"{d['case']}: axial slice {d['slice']} (most body voxels), {settings.samples} MC sample(s)")
    if calibration["methods"]:
        files["calibration.png"] = save_sparsification_figure(out / "calibration.png", calibration)
        files["reliability.png"] = save_reliability_figure(out / "reliability.png", calibration)
    files["calibration.json"] = write_json(out / "calibration.json", _json_safe(calibration))
    with atomic_write(out / "table.csv", suffix=".csv") as tmp:
        tmp.write_text(format_csv_table(rows), encoding="utf-8")
    files["table.csv"] = out / "table.csv"
    with atomic_write(out / "table.md", suffix=".md") as tmp:
        tmp.write_text(f"# Evaluation on {len(cases)} test case(s)\n\n{markdown}", encoding="utf-8")
    files["table.md"] = out / "table.md"
    files["results.json"] = write_json(out / "results.json", _json_safe(results))
    return {"rows": rows, "markdown": markdown, "files": files, "results": results, "calibration": calibration}


def _json_safe(obj):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python numbers, Paths -> str."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
