"""Figures: the comparison figure of one synthesis, and the batch-evaluation figures.

:func:`save_comparison_figure` (``mrtoct demo``): MR | reference CT | sCT | error | uncertainty, for a
colleague to look at.

Rows are an axial, a coronal and a sagittal cut through the centre of the body mask (physical aspect
ratio kept). CT panels use a soft-tissue/bone window of [-400, 1200] HU; the error panel is
sCT - reference in HU ([-300, 300], blue = too dark, red = too bright); the std panel is the
Monte-Carlo standard deviation in HU. The metrics inside the mask are in the title.

:func:`save_method_grid_figure` (``mrtoct evaluate --models``): one case, one row per method, with a zoom
on the highest-error region; :func:`save_sparsification_figure`: the uncertainty-calibration curves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write
from ..io.slicing import canonical_layout, to_canonical


def _cuts(canon: np.ndarray, centre):
    z, y, x = centre
    return [canon[z], canon[:, y, :][::-1], canon[:, :, x][::-1]]  # axial; coronal, sagittal with S up


def save_comparison_figure(path, mri, sct, std, ref=None, mask=None, metrics: dict | None = None,
                           title: str = "MRtoCTSynthesis") -> Path:
    """Write the comparison PNG atomically and return its path. Volumes share the MRI's grid."""
    import matplotlib  # imported here: the Agg backend is chosen only when a figure is drawn, not on import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def canon(v):
        return None if v is None else to_canonical(v.array, v.geometry)[0]

    mr_c, layout = to_canonical(mri.array, mri.geometry)
    sct_c, std_c, ref_c, mask_c = canon(sct), canon(std), canon(ref), canon(mask)
    if mask_c is not None and mask_c.any():
        centre = [int(round(np.mean(ix))) for ix in np.nonzero(mask_c)]
    else:
        centre = [s // 2 for s in mr_c.shape]
    sz, sy, sx = canonical_layout(mri.geometry)[2]
    aspects = [sy / sx, sz / sx, sz / sy]  # row/column spacing of the axial, coronal, sagittal cuts

    columns = [("MRI", mr_c, "gray", None)]
    if ref_c is not None:
        columns.append(("reference CT", ref_c, "gray", (-400, 1200)))
    columns.append(("synthetic CT", sct_c, "gray", (-400, 1200)))
    if ref_c is not None:
        columns.append(("sCT - CT (HU)", sct_c - ref_c, "RdBu_r", (-300, 300)))
    columns.append(("uncertainty: MC std (HU)", std_c, "magma", (0, max(50.0, float(np.percentile(std_c, 99.5))))))

    fig, axes = plt.subplots(3, len(columns), figsize=(3.0 * len(columns), 8.4), squeeze=False)
    for c, (name, vol, cmap, lim) in enumerate(columns):
        if lim is None:
            lo, hi = np.percentile(vol, [1, 99])
            lim = (lo, hi)
        for r, (cut, aspect) in enumerate(zip(_cuts(vol, centre), aspects)):
            ax = axes[r][c]
            im = ax.imshow(cut, cmap=cmap, vmin=lim[0], vmax=lim[1], aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=10)
            if c == 0:
                ax.set_ylabel(["axial", "coronal", "sagittal"][r], fontsize=10)
        if c > 0:
            fig.colorbar(im, ax=[axes[r][c] for r in range(3)], shrink=0.6, pad=0.02)
    if metrics:
        parts = [f"MAE {metrics['mae_hu']:.1f} HU", f"ME {metrics['me_hu']:+.1f} HU",
                 f"PSNR {metrics['psnr_db']:.2f} dB",
                 f"SSIM {metrics['ssim']:.3f}"]
        if metrics.get("mean_std_hu") is not None:
            parts.append(f"mean MC std {metrics['mean_std_hu']:.1f} HU")
        title = f"{title}\n" + ",  ".join(parts) + "  (inside the body mask)"
    fig.suptitle(title, fontsize=11)
    return _save_png(fig, path, 110)


def _save_png(fig, path, dpi) -> Path:
    """Write ``fig`` as a PNG atomically (a half-written file never replaces a good one) and close it."""
    import matplotlib.pyplot as plt  # matplotlib loads when a figure is drawn (see save_comparison_figure)

    path = Path(path)
    try:
        with atomic_write(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------- batch-evaluation figures
#: the method-grid figure: inches per panel (width, height), extra height for the title, dots per inch
GRID_PANEL_INCHES = (2.4, 2.5)
GRID_TITLE_INCHES = 0.6
GRID_DPI = 100
GRID_COLUMNS = ("MRI", "reference CT", "synthetic CT", "|sCT - CT| (HU)", "MC std (HU)", "ROI zoom: sCT")
CT_WINDOW = (-400.0, 1200.0)
ERROR_MAX_HU = 300.0


def grid_figure_size(n_rows: int) -> tuple[int, int]:
    """``(height, width)`` in pixels of :func:`save_method_grid_figure` with ``n_rows`` methods."""
    w, h = GRID_PANEL_INCHES
    return (int(round((h * n_rows + GRID_TITLE_INCHES) * GRID_DPI)), int(round(w * len(GRID_COLUMNS) * GRID_DPI)))


def save_method_grid_figure(path, mr, ref, rows, *, mask=None, roi=None, pixel_spacing=(1.0, 1.0),
                            title: str = "") -> Path:
    """One case, several methods: a PNG with one row per method, written atomically.

    ``mr``, ``ref``: 2D slices (canonical axial view; MR in its own units, CT in HU); ``rows``: dicts with
    ``label``, ``sct`` and ``std`` (2D, HU) and optional ``metrics`` (a :func:`.metrics.evaluate` dict,
    printed under the sCT panel). Columns (:data:`GRID_COLUMNS`): MR (1st-99th percentile window) |
    reference CT and sCT (window :data:`CT_WINDOW`, the same as :func:`save_comparison_figure`) |
    |sCT - CT| (0 to :data:`ERROR_MAX_HU` HU) | MC std (0 to the largest std of all rows inside the mask, at
    least 1 HU) | the sCT zoomed on ``roi = (r0, r1, c0, c1)`` (the box is drawn on the full-size CT,
    sCT, error and std panels; DDMM-Synth's figures magnify a region of interest the same way).
    ``mask`` outlines the body on the error panel. The physical aspect ratio (``pixel_spacing`` = row,
    column spacing) is kept. Size: :func:`grid_figure_size`.
    """
    import matplotlib  # imported here: the Agg backend is chosen only when a figure is drawn, not on import

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    mr, ref = np.asarray(mr, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    aspect = float(pixel_spacing[0]) / float(pixel_spacing[1])
    inside = np.ones(ref.shape, dtype=bool) if mask is None or not np.any(mask) else np.asarray(mask) > 0
    mr_lim = tuple(np.percentile(mr[inside] if inside.any() else mr, [1, 99]))
    std_max = max([1.0] + [float(np.max(np.asarray(r["std"])[inside])) for r in rows if np.size(r["std"])])
    n = max(1, len(rows))
    w_in, h_in = GRID_PANEL_INCHES
    fig, axes = plt.subplots(n, len(GRID_COLUMNS), squeeze=False,
                             figsize=(w_in * len(GRID_COLUMNS), h_in * n + GRID_TITLE_INCHES))
    total_h = h_in * n + GRID_TITLE_INCHES
    top = 1 - (GRID_TITLE_INCHES + 0.3) / total_h
    bottom = 0.4 / total_h  # room for the last row's two lines of metrics under its panels
    fig.subplots_adjust(left=0.06, right=0.99, bottom=bottom, top=top, wspace=0.08, hspace=0.45)
    for i, row in enumerate(rows):
        sct, std = np.asarray(row["sct"], dtype=np.float64), np.asarray(row["std"], dtype=np.float64)
        err = np.abs(sct - ref)
        panels = [(mr, "gray", mr_lim), (ref, "gray", CT_WINDOW), (sct, "gray", CT_WINDOW),
                  (err, "inferno", (0.0, ERROR_MAX_HU)), (std, "magma", (0.0, std_max))]
        if roi is not None:
            r0, r1, c0, c1 = roi
            panels.append((sct[r0:r1, c0:c1], "gray", CT_WINDOW))
        for j, (img, cmap, lim) in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(img, cmap=cmap, vmin=lim[0], vmax=lim[1], aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(GRID_COLUMNS[j], fontsize=9)
            if roi is not None and j in (1, 2, 3, 4):
                ax.add_patch(patches.Rectangle((roi[2] - 0.5, roi[0] - 0.5), roi[3] - roi[2], roi[1] - roi[0],
                                               fill=False, edgecolor="cyan", linewidth=1.0))
            if j == 3 and mask is not None and np.any(mask) and not np.all(mask):
                ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors="white", linewidths=0.4)
        for j in range(len(panels), len(GRID_COLUMNS)):
            axes[i][j].axis("off")
        axes[i][0].set_ylabel(row["label"], fontsize=8)
        m = row.get("metrics")
        if m:
            axes[i][2].set_xlabel(f"PSNR {m['psnr_db']:.2f} dB, SSIM {m['ssim']:.3f}\n"
                                  f"MAE {m['mae_hu']:.1f} HU, ME {m['me_hu']:+.1f} HU", fontsize=7)
        axes[i][3].set_xlabel(f"max {float(err[inside].max()) if inside.any() else 0.0:.0f} HU in the body", fontsize=7)
        axes[i][4].set_xlabel(f"mean {float(std[inside].mean()) if inside.any() else 0.0:.1f} HU, "
                              f"scale 0-{std_max:.0f}", fontsize=7)
    fig.suptitle(title + f"\nCT window [{CT_WINDOW[0]:.0f}, {CT_WINDOW[1]:.0f}] HU, error 0-{ERROR_MAX_HU:.0f} HU; "
                         "metrics are for the whole volume inside the body mask", fontsize=9)
    return _save_png(fig, path, GRID_DPI)


def save_sparsification_figure(path, calibration: dict, title: str = "Uncertainty calibration") -> Path:
    """Sparsification curves, one colour per method, written atomically as a PNG.

    ``calibration``: ``{"fractions": [...], "methods": {label: {"curve", "oracle", "random", "mae0", "ause",
    "spearman"}}}`` (what :func:`.evaluation.run_evaluation` writes to calibration.json). Left: MAE (HU) of
    the voxels kept after removing the fraction with the highest MC std (solid), removing by the true error
    (oracle, dashed) and at random (dotted). Right: the same divided by MAE at f = 0, so methods compare.
    """
    import matplotlib  # imported here: the Agg backend is chosen only when a figure is drawn, not on import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = np.asarray(calibration["fractions"], dtype=np.float64)
    n_methods = len(calibration["methods"])
    legend_in = 0.25 * ((n_methods + 1) // 2) + 0.3
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2 + legend_in))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, c) in enumerate(calibration["methods"].items()):
        col = colours[i % len(colours)]
        for ax, scale in ((axes[0], 1.0), (axes[1], 1.0 / c["mae0"] if c["mae0"] else np.nan)):
            ax.plot(f, np.asarray(c["curve"]) * scale, color=col, lw=1.6,
                    label=f"{label} (AUSE {c['ause']:.3f}, Spearman {c['spearman']:.2f})" if ax is axes[0] else None)
            ax.plot(f, np.asarray(c["oracle"]) * scale, color=col, lw=1.0, ls="--")
            ax.plot(f, np.asarray(c["random"]) * scale, color=col, lw=0.8, ls=":")
    axes[0].set_ylabel("MAE of the remaining voxels (HU)")
    axes[1].set_ylabel("relative MAE (MAE / MAE at f = 0)")
    for ax in axes:
        ax.set_xlabel("fraction of voxels removed (highest MC std first)")
        ax.grid(alpha=0.3)
        ax.set_xlim(0, 1)
    fig.suptitle(f"{title}: solid = by MC std, dashed = oracle (by |error|), dotted = random removal", fontsize=10)
    fig.tight_layout(rect=(0, legend_in / (4.2 + legend_in), 1, 1))
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    return _save_png(fig, path, GRID_DPI)


def save_reliability_figure(path, calibration: dict, title: str = "Reliability of the MC std") -> Path:
    """Reliability diagram, one colour per method, written atomically as a PNG: the observed fraction of voxels
    inside the Gaussian interval ``sCT +- z std`` against its nominal coverage (``calibration["methods"][label]
    ["reliability"]``, :func:`.evaluation.reliability_curve`). On the diagonal the std is calibrated; below it the
    intervals are too narrow (over-confident), above it too wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 5.6))
    ax.plot([0, 1], [0, 1], color="0.5", lw=1.0, ls="--", label="calibrated")
    for label, c in calibration["methods"].items():
        rel = c.get("reliability")
        if not rel:
            continue
        ax.plot(rel["nominal"], rel["observed"], marker="o", ms=3, lw=1.5,
                label=f"{label} (95 %: {c.get('coverage95', float('nan')):.3f})")
    ax.set_xlabel("nominal coverage of sCT +- z std")
    ax.set_ylabel("observed fraction of body voxels inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    fig.tight_layout()
    return _save_png(fig, path, GRID_DPI)
