"""Rigid and affine stages: Mattes mutual information on a per-axis pyramid, one registration per level.

The metric's image gradients are central differences (ITK's smoothed gradient filters switched off):
the default recursive-Gaussian gradient filter uses sigma = the largest spacing, i.e. about one voxel
across 3 mm slices, and its through-plane derivative disagrees with the metric's own values, so the
optimiser's line search finds no improving step on the finer levels and the transform freezes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from .pyramid import Level, level_image

MIN_SAMPLES = 20_000  # per level: at least this many random fixed voxels inside the overlap (all if fewer) ...
MAX_SAMPLES = 30_000  # ... and at most this many: the histogram's precision depends on the count, not the image size
STILL_MM = 0.01  # a level whose transform moved no probe point by more than this did not move
LINE_SEARCH_ITERATIONS = 5  # golden-section steps per conjugate-gradient iteration

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class StageOptions:
    seed: int = 0
    sampling: float = 0.15
    bins: int = 50
    iterations: int = 100


def level_sampling(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, sampling: float) -> float:
    """Fraction of ``fixed``'s voxels the metric samples: ``sampling`` of the voxels that map inside
    ``moving`` through ``transform`` (the overlap; a small-field MRI covers part of the CT), kept within
    [MIN_SAMPLES, MAX_SAMPLES] overlap voxels, and returned as a fraction of all fixed voxels (the
    random draw is over the whole fixed image)."""
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    inside = sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    n_overlap = max(int(np.count_nonzero(sitk.GetArrayViewFromImage(inside))), 1)
    want = min(max(sampling * n_overlap, MIN_SAMPLES), MAX_SAMPLES, n_overlap)
    return float(min(1.0, want / n_overlap))


def make_method(opts: StageOptions, sampling: float, iterations: int,
                kind: str = "linear") -> sitk.ImageRegistrationMethod:
    """Mattes MI with central-difference image gradients and a fixed random sample set (seeded).

    ``kind="linear"``: conjugate gradients with a short golden-section line search and parameter scales
    from physical shifts (rotations and translations weighted by how far they move voxels);
    ``kind="bspline"``: L-BFGS-B (thousands of parameters, no scale estimation needed).
    """
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(opts.bins))
    # central differences instead of ITK's default recursive-Gaussian gradient filters (see module doc)
    r.SetMetricUseFixedImageGradientFilter(False)
    r.SetMetricUseMovingImageGradientFilter(False)
    r.SetMetricSamplingStrategy(r.RANDOM)
    # SimpleITK reads a sampling seed of 0 as "seed from the wall clock": shift by one to stay repeatable
    r.SetMetricSamplingPercentage(float(sampling), int(opts.seed) + 1)
    r.SetInterpolator(sitk.sitkLinear)
    if kind == "bspline":
        r.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=int(iterations),
                               maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * int(iterations),
                               costFunctionConvergenceFactor=1e7)
    else:
        r.SetOptimizerAsConjugateGradientLineSearch(learningRate=1.0, numberOfIterations=int(iterations),
                                                    convergenceMinimumValue=1e-6, convergenceWindowSize=10,
                                                    lineSearchMaximumIterations=LINE_SEARCH_ITERATIONS)
        r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([1])
    r.SetSmoothingSigmasPerLevel([0.0])
    return r


def unwrap(t: sitk.Transform) -> sitk.Transform:
    t = t.Downcast() if hasattr(t, "Downcast") else t
    if isinstance(t, sitk.CompositeTransform) and t.GetNumberOfTransforms() == 1:
        t = t.GetNthTransform(0)
        t = t.Downcast() if hasattr(t, "Downcast") else t
    return t


def max_displacement(a: sitk.Transform, b: sitk.Transform, points: np.ndarray) -> float:
    """Largest distance (mm) between where ``a`` and ``b`` send the rows of ``points``."""
    pa = np.array([a.TransformPoint(tuple(map(float, p))) for p in points])
    pb = np.array([b.TransformPoint(tuple(map(float, p))) for p in points])
    return float(np.linalg.norm(pa - pb, axis=1).max())


def box_points(image: sitk.Image) -> np.ndarray:
    """A 3 x 3 x 3 grid over ``image``'s voxel box (corners, edge and face centres, centre), physical mm:
    where the motion of a level is measured."""
    size = np.asarray(image.GetSize(), float) - 1
    idx = [np.array(c) * size / 2 for c in np.ndindex(3, 3, 3)]
    return np.array([image.TransformContinuousIndexToPhysicalPoint(list(map(float, i))) for i in idx])


def run_stage(name: str, initial: sitk.Transform, fixed: sitk.Image, moving: sitk.Image, levels: Sequence[Level],
              opts: StageOptions, progress: ProgressFn | None, base: float, weight: float,
              moving_initial: sitk.Transform | None = None, kind: str = "linear") -> tuple[sitk.Transform, dict]:
    """Optimise ``initial`` level by level (coarse to fine); progress is reported in [base, base + weight].

    Each level is its own registration on that level's smoothed and shrunken images, started from the
    previous level's result. Returns the optimised transform and a stage summary whose ``levels`` list
    says, per level, the metric at the first and last iteration, the iterations, how far (mm) the
    transform moved the fixed image's box corners, and the optimiser's stop condition.
    """
    current = initial
    t0 = time.perf_counter()
    probe = box_points(fixed)
    n_levels = len(levels)
    level_info = []
    for li, lv in enumerate(levels):
        f_img = level_image(fixed, lv.fixed_shrink, lv.fixed_sigma_mm)
        m_img = level_image(moving, lv.moving_shrink, lv.moving_sigma_mm)
        iterations = opts.iterations
        start = current if moving_initial is None else sitk.CompositeTransform([moving_initial, current])
        method = make_method(opts, level_sampling(f_img, m_img, start, opts.sampling), max(iterations, 1), kind)
        if moving_initial is not None:
            method.SetMovingInitialTransform(moving_initial)
        method.SetInitialTransform(current, inPlace=False)
        state = {"cancel": None, "metrics": []}

        def on_iteration(method=method, li=li, state=state):
            state["metrics"].append(float(method.GetMetricValue()))
            if progress is None or state["cancel"] is not None:
                return
            it = method.GetOptimizerIteration()
            frac = base + weight * (li + min(it + 1, iterations) / max(iterations, 1)) / n_levels
            try:
                progress(min(frac, base + weight), f"{name}: level {li + 1}/{n_levels}, iteration {it + 1}, "
                                                   f"metric {state['metrics'][-1]:.4f}")
            except BaseException as exc:  # e.g. CancelledError: end this iteration, stop, re-raise below
                state["cancel"] = exc
                method.StopRegistration()

        method.AddCommand(sitk.sitkIterationEvent, on_iteration)
        tl = time.perf_counter()
        try:
            if iterations > 0:
                out = unwrap(method.Execute(f_img, m_img))
            else:  # evaluate only: the transform stays where it is
                state["metrics"].append(float(method.MetricEvaluate(f_img, m_img)))
                out = current
        except RuntimeError as exc:
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
            raise InputError(
                f"{name} registration failed at pyramid level {li + 1} of {n_levels} ({last}).",
                "check that the MRI and the CT show the same body part and overlap after a rough alignment "
                "(e.g. move the MRI in Slicer's Transforms module first), or try another mode or init.",
            ) from None
        if state["cancel"] is not None:
            raise state["cancel"]
        if moving_initial is None:
            moved = max_displacement(out, current, probe)
        else:  # the metric sees moving_initial(T(x)): measure that composite
            moved = max_displacement(sitk.CompositeTransform([moving_initial, out]),
                                     sitk.CompositeTransform([moving_initial, current]), probe)
        ms = state["metrics"]
        level_info.append(dict(level=li + 1, resolution_mm=lv.target_mm, shrink_fixed=list(lv.fixed_shrink),
                               shrink_moving=list(lv.moving_shrink), smoothing_fixed_mm=list(lv.fixed_sigma_mm),
                               smoothing_moving_mm=list(lv.moving_sigma_mm),
                               metric_first=ms[0] if ms else None, metric_last=ms[-1] if ms else None,
                               iterations=len(ms) if iterations > 0 else 0, moved_mm=round(moved, 4),
                               stop=(method.GetOptimizerStopConditionDescription() if iterations > 0
                                     else "no iterations requested"),
                               seconds=round(time.perf_counter() - tl, 3)))
        current = out
    info = dict(name=name, levels=level_info, metric=level_info[-1]["metric_last"],
                iterations_last_level=level_info[-1]["iterations"], stop=level_info[-1]["stop"],
                seconds=round(time.perf_counter() - t0, 3))
    return current, info
