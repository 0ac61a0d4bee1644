"""The comparison figure: MR | reference CT | sCT | error | uncertainty, for a colleague to look at.

Rows are an axial, a coronal and a sagittal cut through the centre of the body mask (physical aspect
ratio kept). CT panels use a soft-tissue/bone window of [-400, 1200] HU; the error panel is
sCT - reference in HU ([-300, 300], blue = too dark, red = too bright); the std panel is the
Monte-Carlo standard deviation in HU. The metrics inside the mask are in the title.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .slicing import canonical_layout, to_canonical


def _cuts(canon: np.ndarray, centre):
    z, y, x = centre
    return [canon[z], canon[:, y, :][::-1], canon[:, :, x][::-1]]  # axial; coronal, sagittal with S up


def save_comparison_figure(path, mri, sct, std, ref=None, mask=None, metrics: dict | None = None,
                           title: str = "MRtoCTSynthesis") -> Path:
    """Write the comparison PNG atomically and return its path. Volumes share the MRI's grid."""
    import matplotlib

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
        parts = [f"MAE {metrics['mae_hu']:.1f} HU", f"ME {metrics['me_hu']:+.1f} HU", f"PSNR {metrics['psnr_db']:.2f} dB",
                 f"SSIM {metrics['ssim']:.3f}"]
        if metrics.get("mean_std_hu") is not None:
            parts.append(f"mean MC std {metrics['mean_std_hu']:.1f} HU")
        title = f"{title}\n" + ",  ".join(parts) + "  (inside the body mask)"
    fig.suptitle(title, fontsize=11)
    path = Path(path)
    try:
        with atomic_write(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
