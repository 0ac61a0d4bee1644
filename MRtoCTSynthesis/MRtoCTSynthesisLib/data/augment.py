"""On-the-fly augmentation of MR/CT training patches with TorchIO (the ``train`` extra pins the version).

:func:`build_augmentation` turns the ``data.augment`` section of a training config into a callable
``(mr [C, H, W], ct [1, H, W]) -> (mr, ct)`` in model units. MR-only transforms change the MR's appearance
(the CT, the target, is left alone): ``bias_field`` (TorchIO ``RandomBiasField``: a smooth polynomial
multiplicative field), ``gamma`` (``RandomGamma``), ``noise`` (``RandomNoise``), ``blur`` (``RandomBlur``),
``anisotropy`` (``RandomAnisotropy``: down- and up-sampling along one in-plane axis, a thick or coarse
acquisition), ``motion`` (``RandomMotion``: k-space mixing of rigidly moved copies) and ``ghosting``
(``RandomGhosting``: phase-encoding ghosts). ``affine`` (``RandomAffine``: in-plane rotation and isotropic
scaling) moves MR and CT together, so the pair stays aligned. Each entry is ``{p: probability, ...}`` with the
transform's own ranges; a missing entry or ``p: 0`` turns a transform off. Example (the bundled model's
recipe, ``training/configs/default_ddpm.yaml``)::

    augment: {bias_field: {p: 0.3, coefficients: 0.4}, gamma: {p: 0.3, log_gamma: 0.3},
              noise: {p: 0.2, std: [0.0, 0.03]}, blur: {p: 0.15, std: [0.0, 1.0]},
              anisotropy: {p: 0.15, downsampling: [1.5, 3.0]}, affine: {p: 0.3, scales: 0.1, degrees: 10},
              motion: {p: 0.05, degrees: 3, translation: 3}, ghosting: {p: 0.05, intensity: [0.1, 0.4]}}

The transforms work on ``(x + 1) / 2`` (background at 0, so multiplicative fields and gamma behave as on
magnitude images, and the affine pads both images with background) and the result is mapped back and clipped
to the model range. TorchIO draws from torch's
global generator, which the training loop seeds per step, so augmented runs are reproducible.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ..errors import InputError

#: name -> (TorchIO class, MR only?, default parameters)
TRANSFORMS: dict[str, tuple[str, bool, dict]] = {
    "bias_field": ("RandomBiasField", True, {"coefficients": 0.4, "order": 3}),
    "gamma": ("RandomGamma", True, {"log_gamma": 0.3}),
    "noise": ("RandomNoise", True, {"std": (0.0, 0.03)}),
    "blur": ("RandomBlur", True, {"std": (0.0, 1.0)}),
    "anisotropy": ("RandomAnisotropy", True, {"downsampling": (1.5, 3.0)}),
    "motion": ("RandomMotion", True, {"degrees": 3.0, "translation": 3.0, "num_transforms": 2}),
    "ghosting": ("RandomGhosting", True, {"intensity": (0.1, 0.4), "num_ghosts": (2, 6)}),
    "affine": ("RandomAffine", False, {"scales": 0.1, "degrees": 10.0}),
}


def _spatial_kwargs(name: str, params: dict) -> dict:
    """In-plane versions of the 3-D transforms (slices are stored as H x W x 1 volumes)."""
    kw = dict(params)
    if name == "anisotropy":
        kw.setdefault("axes", (0, 1))
    if name == "affine":
        s, d = float(kw.pop("scales", 0.1)), float(kw.pop("degrees", 10.0))
        kw.update(scales=(1 - s, 1 + s, 1 - s, 1 + s, 1, 1), degrees=(0, 0, 0, 0, -d, d),
                  isotropic=False, default_pad_value=0.0, image_interpolation="linear")
    if name == "motion":  # TorchIO draws one range for all three axes; kept small for 1-voxel-deep slices
        kw.update(degrees=float(kw.get("degrees", 3.0)), translation=float(kw.get("translation", 3.0)))
    if name == "ghosting":
        kw.setdefault("axes", (0, 1))
    if name == "blur":
        lo, hi = kw.pop("std", (0.0, 1.0))
        kw["std"] = (lo, hi, lo, hi, 0, 0)
    return kw


def build_augmentation(spec: Mapping[str, Any] | None) -> Callable | None:
    """The patch augmentation described by a config's ``data.augment`` (None or empty: no augmentation)."""
    if not spec:
        return None
    if not isinstance(spec, Mapping):
        raise InputError(f"data.augment must be a mapping of transform names to settings, got {spec!r}.",
                         f"use e.g. {{bias_field: {{p: 0.3}}}}; transforms: {', '.join(TRANSFORMS)}.")
    unknown = sorted(set(spec) - set(TRANSFORMS))
    if unknown:
        raise InputError(f"unknown augmentation(s) in data.augment: {', '.join(unknown)}.",
                         f"use: {', '.join(TRANSFORMS)}.")
    try:
        import torchio as tio  # optional: only augmented training needs it (pip install ".[train]")
    except ImportError:
        raise InputError("data.augment needs the TorchIO package, which is not installed.",
                         'install the training extra: pip install -e ".[train]" (or drop data.augment).') from None
    mr_only, both = [], []
    for name, settings in spec.items():
        settings = dict(settings or {})
        p = float(settings.pop("p", 0.0))
        if not 0.0 <= p <= 1.0:
            raise InputError(f"data.augment.{name}.p must be a probability in [0, 1], got {p}.", "use e.g. p: 0.3.")
        if p == 0.0:
            continue
        cls_name, is_mr_only, defaults = TRANSFORMS[name]
        params = {**defaults, **settings}
        try:
            t = getattr(tio, cls_name)(p=p, **_spatial_kwargs(name, params),
                                       **({"include": ["mr"]} if is_mr_only else {}))
        except (TypeError, ValueError) as e:
            raise InputError(f"data.augment.{name} has settings TorchIO's {cls_name} refuses: {e}",
                             f"see TorchIO's {cls_name} documentation for its parameters.") from e
        (mr_only if is_mr_only else both).append(t)
    if not mr_only and not both:
        return None
    pipeline = tio.Compose(both + mr_only)

    def augment(mr: torch.Tensor, ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        subject = tio.Subject(mr=tio.ScalarImage(tensor=((mr.float() + 1) / 2)[..., None]),
                              ct=tio.ScalarImage(tensor=((ct.float() + 1) / 2)[..., None]))
        out = pipeline(subject)
        m = (out["mr"].data[..., 0] * 2 - 1).clamp(-1, 1)
        c = (out["ct"].data[..., 0] * 2 - 1).clamp(-1, 1)
        return m.to(mr.dtype), c.to(ct.dtype)

    return augment
