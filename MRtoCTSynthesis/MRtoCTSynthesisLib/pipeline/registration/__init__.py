"""MR -> CT registration with SimpleITK: rigid by default; affine and deformable on request.

Direction: the **CT is fixed and the MRI is moving**. The result is the MRI resampled onto the CT's
voxel grid, which is what paired training (and voxel-wise evaluation of a synthetic CT against the
real one) needs. The returned transform follows ITK's convention: it maps a physical point of the
*fixed* (CT) space to the corresponding point of the *moving* (MRI) space, which is the direction
resampling needs (``registered(x) = mri(T(x))``). To move points drawn on the MRI into CT space use
``transform.GetInverse()`` (rigid and affine modes).

Modes, each with its use:

* ``"rigid"`` (default): an Euler 3D transform. One subject's MRI and CT of rigid anatomy (head,
  pelvic bones): the right model for MR -> CT synthesis input and for evaluation.
* ``"affine"``: the rigid result refined by one affine transform (12 parameters). For scans whose
  scale differs (gradient calibration, another subject). On rigid anatomy it only adds error.
* ``"rigid+affine"``: the same refinement kept as ``CompositeTransform([rigid, affine])``
  (``rigid(affine(x))``), for callers that want the two parts separately.
* ``"bspline"``: rigid, then a cubic B-spline (control points every 40 mm) on the two coarser levels.
  For preparing paired training data when soft tissue moved between the sessions. Reports the
  Jacobian determinant range (``quality['jacobian_min']``/``['jacobian_max']``).
* ``"syn"``: rigid, then ANTs SyN (needs the optional antspyx; same use as ``"bspline"``).

Recipe (:mod:`.linear`, :mod:`.pyramid`): the starting transform is centred on the images (``init``:
``"moments"`` = centres of mass of the Otsu body masks, robust to different fields of view;
``"geometry"`` = image centres; ``"none"`` = the images' physical positions as given, e.g. after a
manual alignment in Slicer, with the rotation centre at the CT's centre of mass). With the default
``"moments"`` the other two are candidates too, and so is, when the MRI covers only a slab of the CT's body
(a partial field of view), the slab slid along the body in steps of half its extent: every candidate is
scored by the metric on the coarsest level, the best is optimised, and the next ones only if that run fails;
``stages[0]["start"]`` and ``["start_metrics"]`` record the choice. Mattes mutual
information (50 bins) with central-difference image gradients (ITK's smoothed gradient filters off:
they froze the optimiser on thick slices) on a fixed random subset of the fixed voxels (15 %, at least
20 000 and at most 60 000 per level; seeded, so a run is repeatable); conjugate gradients with a
5-step golden-section line search and parameter scales from physical shifts; a three-level pyramid
whose levels have a target resolution of 4, 2 and 1 times the finest spacing, reached *per axis*
(shrink factor ``floor(target / spacing)``, so a thick slice axis is not shrunk; Gaussian smoothing
``sqrt(target^2 - spacing^2) / 2`` mm); linear interpolation.

Honest stop: every level records the metric at its first and last iteration, how far (mm) it moved a
3 x 3 x 3 grid of points over the CT box, and the optimiser's stop condition. A level that did not move
(< 0.01 mm), a final metric worse than at the start, a deformation that folds or a small overlap is
reported in ``RegistrationResult.warnings`` (and as a :class:`RegistrationWarning`),
with the numbers, instead of being passed off as success. ``RegistrationResult.quality`` holds the
ground-truth-free checks (:mod:`.quality`): metric as given / at the start / final (every overlap voxel),
MI gain, gradient correlation and edge alignment before and after, overlap fraction.

Measured (``benchmarks/registration.py`` and its 11 cases, one thread, a shared 2-core x86-64 CPU at load
average 4-10; see benchmarks/README.md): on generated thick oblique cases (MRI 0.93 x 0.93 x 3 mm tilted 7 deg,
CT 0.93 x 0.93 x 3 mm tilted 7 deg about another axis; head and pelvis, T1 and T2; motions up to 15 deg and
20 mm, partial fields of view, a 1 mm case and a real 1 mm T1 MRI) the rigid default's mean target registration
error was 0.04-0.28 mm on every case, in 0.28-0.94x the time of ANTs Rigid run alongside (313 s against 517 s
in all; ANTs failed on three pelvis cases); elastix's default rigid map was faster at a similar error. The
previous default (rigid+affine, smoothed metric gradients) left 2.9-7.2 mm through-plane on such geometry.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from ...io.volume import Volume
from . import quality as _quality
from .deformable import antspyx_available, bspline_stage, syn_stage
from .linear import STILL_MM, StageOptions, level_sampling, make_method, run_stage
from .pyramid import level_image, plan_levels
from .transforms import (
    TRANSFORM_SUFFIXES,
    check_transform_suffix,
    load_transform,
    resample_moving,
    save_transform,
    target_registration_error,
    transform_summary,
)

__all__ = [
    "MODES", "INITS", "TRANSFORM_SUFFIXES", "RegistrationResult", "RegistrationWarning", "register",
    "resample_moving", "save_transform", "load_transform", "check_transform_suffix", "target_registration_error",
    "antspyx_available", "transform_summary", "DEFAULT_MODE",
]

MODES = ("rigid", "affine", "rigid+affine", "bspline", "syn")
DEFAULT_MODE = "rigid"
INITS = ("moments", "geometry", "none")
MAX_ITERATIONS = 10_000
METRIC_TOLERANCE = 2e-3  # Mattes MI differences below this are "unchanged" (the values are about -0.3 .. -1.3)
MIN_OVERLAP = 0.2  # warn when fewer of the CT's voxels than this map inside the MRI (a small-FOV MRI covers ~0.5)

ProgressFn = Callable[[float, str], None]


class RegistrationWarning(UserWarning):
    """A registration finished but did not behave as a converged one should (see the message's numbers)."""


@dataclass
class RegistrationResult:
    """Outcome of :func:`register`.

    ``transform`` maps fixed (CT) physical points to moving (MRI) physical points; ``registered`` is
    the moving image resampled onto exactly the fixed grid; ``final_metric`` is the Mattes mutual
    information at the end (every overlap voxel; negative: lower is better); ``stages`` holds one dict
    per stage (name, seconds, and per level: resolution, shrink factors, smoothing, metric at the
    first/last iteration, iterations, mm moved, stop condition); ``quality`` is a plain dict of
    numbers (see :func:`register`); ``warnings`` lists what did not look converged (empty when all is
    well).
    """

    transform: sitk.Transform
    registered: Volume
    final_metric: float
    stages: list = field(default_factory=list)
    mode: str = DEFAULT_MODE
    quality: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return not self.warnings


def _check_volume(vol, what: str) -> sitk.Image:
    if not isinstance(vol, Volume):
        raise InputError(f"{what} must be a Volume (from read_volume), got {type(vol).__name__}.",
                         "read the image with MRtoCTSynthesisLib.io.volume.read_volume first.")
    arr = np.asarray(vol.array)
    if arr.ndim != 3 or min(arr.shape) < 4:
        raise InputError(f"{what} has shape {arr.shape}; registration needs a 3D volume at least 4 voxels "
                         "along every axis.", "give the full 3D volume.")
    if not np.isfinite(arr).all():
        raise InputError(f"{what} has NaN/Inf voxels.", "fill them (e.g. with the background value) first.")
    if float(arr.max()) - float(arr.min()) <= 1e-6 * max(1.0, abs(float(arr.max()))):
        raise InputError(f"{what} is constant; there is nothing to register.", "check that the right file was loaded.")
    return Volume(arr.astype(np.float32, copy=False), vol.geometry).to_sitk()


def _check_args(mode, init, seed, bins, iterations, sampling) -> tuple[str, str]:
    mode_l = str(mode).lower()
    if mode_l not in MODES:
        raise InputError(f"unknown registration mode '{mode}'.", f"use one of: {', '.join(MODES)}.")
    init_l = str(init).lower()
    if init_l not in INITS:
        raise InputError(f"unknown registration initialisation '{init}'.", f"use one of: {', '.join(INITS)}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 32 - 1:
        raise InputError(f"registration seed must be a non-negative integer, got {seed!r}.", "pass e.g. seed=0.")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 8 <= int(bins) <= 256:
        raise InputError(f"bins={bins!r} is outside [8, 256].", "use e.g. bins=50.")
    if (isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer))
            or not 0 <= int(iterations) <= MAX_ITERATIONS):
        raise InputError(f"iterations={iterations!r} is outside [0, {MAX_ITERATIONS}].",
                         "use e.g. iterations=100 (0 only evaluates the starting alignment).")
    try:
        ok = 0 < float(sampling) <= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"metric sampling fraction {sampling!r} is outside (0, 1].", "use e.g. 0.15.")
    if mode_l == "syn" and not antspyx_available():
        raise InputError("registration mode 'syn' needs antspyx, which is not installed.",
                         "install it (pip install antspyx==0.6.3, the project's `bench` extra) or use mode 'bspline'.")
    return mode_l, init_l


def _body_mask(img: sitk.Image) -> sitk.Image:
    """The Otsu foreground of ``img`` (1 = body): the moments of the intensities themselves would weight bright
    fat / dark bone differently in MR and CT."""
    return sitk.OtsuThreshold(img, 0, 1)


def _initial_rigid(f_img: sitk.Image, m_img: sitk.Image, init: str, f_body: sitk.Image | None = None,
                   m_body: sitk.Image | None = None) -> sitk.Euler3DTransform:
    """The starting transform for ``init``; ``f_body``/``m_body``: the images' :func:`_body_mask`, when the caller
    has them already."""
    if init == "geometry":
        return sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
            f_img, m_img, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY))
    f_mask = sitk.Cast(f_body if f_body is not None else _body_mask(f_img), sitk.sitkFloat32)
    if init == "none":  # keep the given alignment; rotate about the CT body's centre of mass
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(sitk.Cast(f_mask, sitk.sitkUInt8))
        centre = stats.GetCentroid(1) if stats.HasLabel(1) else f_img.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2 for n in f_img.GetSize()])
        t = sitk.Euler3DTransform()
        t.SetCenter(centre)
        return t
    m_mask = sitk.Cast(m_body if m_body is not None else _body_mask(m_img), sitk.sitkFloat32)
    return sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        f_mask, m_mask, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS))


#: the moving body counts as a partial field of view when its extent along one of its axes is below this
#: fraction of the fixed body's extent along the same direction
PARTIAL_FOV = 0.7
#: how many of the best-ranked starts are optimised in turn when a run fails (e.g. loses the overlap)
MAX_TRIES = 3
#: at most this many positions of a partial field of view along the fixed body are tried as starts
MAX_SLIDES = 9


def _mask_points(mask: sitk.Image, limit: int = 20000) -> np.ndarray:
    """Physical positions (mm) of up to ``limit`` voxels of the binary ``mask`` (an even subsample)."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].astype(float)  # (i, j, k)
    if len(idx) > limit:
        idx = idx[:: len(idx) // limit + 1]
    d = np.asarray(mask.GetDirection(), float).reshape(3, 3)
    return np.asarray(mask.GetOrigin(), float) + (idx * np.asarray(mask.GetSpacing(), float)) @ d.T


def _candidate_starts(f_img: sitk.Image, m_img: sitk.Image, init: str) -> list[tuple[str, sitk.Euler3DTransform]]:
    """Starting transforms worth trying for ``init``: the one asked for and, for the default ``"moments"``,
    the positions as given, the image centres and, when the MRI covers only a slab of the CT's body (a
    partial field of view, where matching whole-body centres of mass puts the slab in the middle of the
    body), the slab slid along the body in steps of half its extent. :func:`_rank_starts` picks by metric."""
    if init != "moments":
        return [(init, _initial_rigid(f_img, m_img, init))]  # the user chose a start: keep it
    f_body, m_body = _body_mask(f_img), _body_mask(m_img)  # once, for every start below
    starts = [(name, _initial_rigid(f_img, m_img, name, f_body, m_body)) for name in ("moments", "none", "geometry")]
    f_pts, m_pts = _mask_points(f_body), _mask_points(m_body)
    if len(f_pts) < 10 or len(m_pts) < 10:
        return starts
    c_m, c_f = m_pts.mean(0), f_pts.mean(0)
    dirs = np.asarray(m_img.GetDirection(), float).reshape(3, 3).T  # rows: the MRI's axis directions
    for axis, d in enumerate(dirs):
        m_proj, f_proj = m_pts @ d, f_pts @ d
        m_ext = float(m_proj.max() - m_proj.min()) + m_img.GetSpacing()[axis]
        lo, hi = float(f_proj.min()), float(f_proj.max())
        if m_ext >= PARTIAL_FOV * (hi - lo):
            continue
        step = max(m_ext / 2.0, 10.0)
        positions = np.arange(lo + m_ext / 2.0, hi - m_ext / 2.0 + 1e-6, step)
        if len(positions) > MAX_SLIDES:
            positions = np.linspace(positions[0], positions[-1], MAX_SLIDES)
        for pos in positions:
            p = c_f + (pos - float(c_f @ d)) * d  # the fixed point that the slab's centre of mass maps from
            t = sitk.Euler3DTransform()
            t.SetCenter(tuple(map(float, p)))
            t.SetTranslation(tuple(map(float, c_m - p)))
            starts.append((f"slab axis {axis} at {pos - float(c_f @ d):+.0f} mm", t))
    return starts


def _rank_starts(starts, f_img: sitk.Image, m_img: sitk.Image, level, opts: StageOptions) -> list[tuple]:
    """``starts`` as ``(name, transform, metric)`` sorted by the Mattes MI at the coarsest pyramid level
    (lower is better; a start without overlap scores +inf and goes last)."""
    f_lv = level_image(f_img, level.fixed_shrink, level.fixed_sigma_mm)
    m_lv = level_image(m_img, level.moving_shrink, level.moving_sigma_mm)
    ranked = []
    for name, t in starts:
        try:
            method = make_method(opts, level_sampling(f_lv, m_lv, t, opts.sampling), 1)
            method.SetInitialTransform(t, inPlace=False)
            value = float(method.MetricEvaluate(f_lv, m_lv))
        except RuntimeError:  # no overlap at all
            value = float("inf")
        ranked.append((name, t, value if np.isfinite(value) else float("inf")))
    return sorted(ranked, key=lambda r: r[2])


def _affine_from(rigid: sitk.Euler3DTransform) -> sitk.AffineTransform:
    a = sitk.AffineTransform(3)
    a.SetCenter(rigid.GetCenter())
    a.SetMatrix(rigid.GetMatrix())
    a.SetTranslation(rigid.GetTranslation())
    return a


def _fmt(v, nd=4):
    return "n/a" if v is None else f"{v:.{nd}f}"


def _stage_warnings(stages: list) -> list[str]:
    out = []
    for st in stages:
        n = len(st.get("levels", []))
        for lv in st.get("levels", []):
            if lv["iterations"] > 0 and lv["moved_mm"] < STILL_MM:
                out.append(f"{st['name']} level {lv['level']}/{n} ({lv['resolution_mm']:.2f} mm): the transform did "
                           f"not move (at most {lv['moved_mm']:.4f} mm over the CT box; metric "
                           f"{_fmt(lv['metric_first'])} -> {_fmt(lv['metric_last'])} in {lv['iterations']} "
                           f"iteration(s); optimiser: {lv['stop']}).")
            elif lv["iterations"] == 0:
                out.append(f"{st['name']} level {lv['level']}/{n}: no iterations were run (iterations=0); the "
                           "transform is the starting alignment.")
    return out


def register(fixed: Volume, moving: Volume, mode: str = DEFAULT_MODE, seed: int = 0,
             progress: ProgressFn | None = None, *, init: str = "moments", sampling: float = 0.15,
             bins: int = 50, iterations: int = 100) -> RegistrationResult:
    """Register ``moving`` (the MRI) to ``fixed`` (the CT) and resample it onto the fixed grid.

    ``mode``: one of :data:`MODES` (see the module docstring for the use of each; default ``"rigid"``).
    ``seed`` fixes the metric's random sampling, so a run is repeatable (SimpleITK receives
    ``seed + 1``: it reads 0 as "use the clock"). ``progress(fraction, message)`` is called at every
    optimiser iteration; it may raise :class:`CancelledError` to stop (the error propagates after the
    current iteration). ``init``: ``"moments"`` (centres of mass of the Otsu body masks, ranked against
    the positions as given, the image centres and, for a partial field of view, slab positions along the
    body; see the module docstring), ``"geometry"`` (image centres only) or ``"none"`` (positions as given
    only). ``sampling``: fraction of the
    fixed voxels the metric samples per level (kept within 20 000 - 60 000 voxels); ``bins``: Mattes
    histogram bins; ``iterations``: the most optimiser iterations per level (0 only evaluates).

    ``result.quality`` (plain floats, None where not computable): ``metric_as_given`` (Mattes MI of the
    images as loaded), ``metric_start`` (after the centring initialisation), ``metric_final``,
    ``mi_gain`` (``metric_start - metric_final``; > 0 is an improvement), ``metric_unchanged`` (True when
    ``|mi_gain| <= 0.002``: the start was already the optimum, or nothing moved -- then a level warning
    says so), ``gradient_correlation_before``
    / ``_after`` and ``edge_alignment_before`` / ``_after`` (as given vs registered; see
    :mod:`.quality`), ``overlap_fraction`` (CT voxels that map inside the MRI), ``seconds``, and for the
    deformable modes ``jacobian_min``, ``jacobian_max``, ``folding_fraction``. ``result.warnings``
    lists what did not look converged. Raises :class:`InputError` for an unknown mode/init, bad
    numbers, a non-3D/constant/non-finite image, a missing antspyx for ``"syn"``, or a failed run.
    """
    t_start = time.perf_counter()
    mode_l, init_l = _check_args(mode, init, seed, bins, iterations, sampling)
    f_img = _check_volume(fixed, "fixed CT")
    m_img = _check_volume(moving, "moving MRI")
    opts = StageOptions(seed=int(seed), sampling=float(sampling), bins=int(bins), iterations=int(iterations))
    levels = plan_levels(f_img, m_img)

    weight = {"rigid": 1.0, "affine": 0.5, "rigid+affine": 0.5, "bspline": 0.4, "syn": 0.5}[mode_l]
    ranked = _rank_starts(_candidate_starts(f_img, m_img, init_l), f_img, m_img, levels[0], opts)
    stages = []
    failure = None
    for start_name, rigid0, _ in ranked[:MAX_TRIES]:  # the best-scoring start; the next ones only if it fails
        try:
            rigid, info = run_stage("rigid", rigid0, f_img, m_img, levels, opts, progress, 0.0, weight)
            break
        except InputError as exc:  # e.g. the optimiser walked off the overlap
            failure = failure or exc
    else:
        raise failure
    info["start"] = start_name
    info["start_metrics"] = {name: (None if not np.isfinite(v) else round(v, 5)) for name, _, v in ranked}
    stages.append(info)
    finer = levels[1:] or levels  # affine refinement: not on the coarse level, where it drifts into scale/shear
    if mode_l == "rigid":
        transform = rigid
    elif mode_l == "affine":
        transform, info = run_stage("affine", _affine_from(rigid), f_img, m_img, finer, opts, progress, 0.5, 0.5)
        stages.append(info)
    elif mode_l == "rigid+affine":
        affine0 = sitk.AffineTransform(3)  # identity, centred on the fixed image, applied before the rigid
        affine0.SetCenter(f_img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in f_img.GetSize()]))
        affine, info = run_stage("affine", affine0, f_img, m_img, finer, opts, progress, 0.5, 0.5,
                                 moving_initial=rigid)
        stages.append(info)
        # CompositeTransform applies its last transform first: x_moving = rigid(affine(x_fixed))
        transform = sitk.CompositeTransform([rigid, affine])
    elif mode_l == "bspline":
        bsp, info = bspline_stage(rigid, f_img, m_img, levels, opts, progress, 0.4, 0.6)
        stages.append(info)
        transform = sitk.CompositeTransform([rigid, bsp])
    else:  # "syn"
        syn, info = syn_stage(rigid, f_img, m_img, int(seed), progress, 0.5)
        stages.append(info)
        transform = sitk.CompositeTransform([rigid, syn])

    registered = resample_moving(moving, fixed.geometry, transform)
    q = _measure_quality(f_img, m_img, rigid0, transform, opts.bins, deformable=mode_l in ("bspline", "syn"))
    q["seconds"] = round(time.perf_counter() - t_start, 3)
    warn = _stage_warnings(stages) + _quality_warnings(q)
    for w in warn:
        warnings.warn(w, RegistrationWarning, stacklevel=2)
    final = q["metric_final"] if q["metric_final"] is not None else float(stages[-1]["metric"] or np.nan)
    if progress is not None:
        progress(1.0, f"{mode_l} registration done, metric {final:.4f}" + (f", {len(warn)} warning(s)" if warn else ""))
    return RegistrationResult(transform=transform, registered=registered, final_metric=final, stages=stages,
                              mode=mode_l, quality=q, warnings=warn)


def _measure_quality(f_img, m_img, start, transform, bins, deformable) -> dict:
    identity = sitk.Transform(3, sitk.sitkIdentity)
    grid = _quality.quality_grid(f_img)
    q = dict(metric_as_given=_quality.mattes_metric(grid, m_img, identity, bins),
             metric_start=_quality.mattes_metric(grid, m_img, start, bins),
             metric_final=_quality.mattes_metric(grid, m_img, transform, bins))
    q["mi_gain"] = (q["metric_start"] - q["metric_final"]
                    if q["metric_start"] is not None and q["metric_final"] is not None else None)
    # unchanged metric: either the start was already the optimum (every level moved and came back: fine)
    # or the optimiser never moved (then a level warning says so)
    q["metric_unchanged"] = q["mi_gain"] is not None and abs(q["mi_gain"]) <= METRIC_TOLERANCE
    sigma = max(1.0, 2.0 * min(grid.GetSpacing()))
    background = float(np.min(sitk.GetArrayViewFromImage(m_img)))
    f_grad = _quality.gradient(grid, sigma)
    for when, t in (("before", identity), ("after", transform)):
        region = _quality.overlap_mask(grid, m_img, t)
        if when == "after":
            q["overlap_fraction"] = float(region.mean())
        resampled = sitk.Resample(m_img, grid, t, sitk.sitkLinear, background, sitk.sitkFloat32)
        scores = _quality.edge_scores(f_grad, resampled, region, sigma)
        q[f"gradient_correlation_{when}"] = scores["gradient_correlation"]
        q[f"edge_alignment_{when}"] = scores["edge_alignment"]
    q["edge_scale_mm"] = sigma
    q["quality_grid_spacing_mm"] = [round(v, 3) for v in grid.GetSpacing()]
    if deformable:
        jmin, jmax, fold = _quality.jacobian_range(transform, f_img)
        q.update(jacobian_min=jmin, jacobian_max=jmax, folding_fraction=fold)
    return q


def _quality_warnings(q: dict) -> list[str]:
    out = []
    ms, mf = q.get("metric_start"), q.get("metric_final")
    if ms is not None and mf is not None and mf > ms + METRIC_TOLERANCE:
        out.append(f"the final metric {mf:.4f} is worse than at the start {ms:.4f} (Mattes MI, lower is better): "
                   "the optimiser made the alignment worse; try init='geometry' or a rough manual alignment.")
    if q.get("overlap_fraction") is not None and q["overlap_fraction"] < MIN_OVERLAP:
        out.append(f"only {100 * q['overlap_fraction']:.0f} % of the CT's voxels map inside the MRI after "
                   "registration: check that both show the same body part.")
    if q.get("folding_fraction"):
        out.append(f"the deformation folds: Jacobian determinant down to {q['jacobian_min']:.3f} "
                   f"({100 * q['folding_fraction']:.2f} % of the voxels <= 0).")
    return out
