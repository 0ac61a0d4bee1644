"""What every synthesis method offers the volume engine (:mod:`..inference`).

A method owns its network(s) and knows how to turn a batch of MR condition slices ``[B, C, H, W]``
(model range, C = 1 + 2 * context) into CT slices ``[B, 1, H, W]`` in the model range. Diffusion methods
draw a fresh sample each call (Monte-Carlo uncertainty comes from calling it K times); deterministic
methods (the CNN) give the same output every time, so their std map is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InputError


@dataclass
class SampleOutput:
    x0: torch.Tensor  # [B, 1, H, W], model range
    nfe: int          # network evaluations for this batch


class SynthesisModel:
    """Base class: a trained method ready for inference (see :func:`..methods.load_model`)."""

    method: str = "?"
    default_sampler: str | None = None
    valid_samplers: tuple[str, ...] = ()
    #: whether ``mrtoct train`` can train this method (False: it samples another method's checkpoint)
    trainable: bool = True

    def __init__(self, networks: dict[str, torch.nn.Module], metadata: dict):
        self.networks = networks
        self.metadata = metadata
        cond = metadata.get("conditioning", {})
        try:
            self.image_size = int(cond["image_size"])
            self.context = int(cond.get("context_slices", 0))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"the checkpoint's conditioning section {cond!r} has no valid image_size / "
                             "context_slices.", "use an unmodified checkpoint written by `mrtoct train`.") from None
        if self.image_size < 1 or self.context < 0:
            raise InputError(f"the checkpoint's model grid is {self.image_size} pixels with {self.context} context "
                             "slices.", "use an unmodified checkpoint written by `mrtoct train`.")
        self.grid_multiple = 1  # H and W of a network input must be multiples of this
        for name, net in networks.items():  # the model grid must suit every network's down-sampling
            f = getattr(getattr(net, "config", None), "downsample_factor", None)
            if isinstance(f, int) and f > 1 and self.image_size % f:
                raise InputError(f"the checkpoint's model grid image_size {self.image_size} does not fit its network "
                                 f"{name!r}, which needs a multiple of {f} (edited or mixed-up checkpoint).",
                                 "use an unmodified checkpoint written by `mrtoct train`.")
            if isinstance(f, int) and f > 1:
                self.grid_multiple = max(self.grid_multiple, f)
        # the training in-plane pixel size (mm): inference resamples every slice to it (io.slicing's physical
        # grid); None for checkpoints without the record, which keep the square-FOV-to-image_size resize
        pixel = cond.get("pixel_spacing_mm")
        if pixel is not None:
            try:
                pixel = float(pixel)
            except (TypeError, ValueError):
                pixel = float("nan")
            if not (0.05 <= pixel <= 50.0):
                raise InputError(f"the checkpoint's conditioning pixel_spacing_mm {cond.get('pixel_spacing_mm')!r} "
                                 "is not a pixel size between 0.05 and 50 mm.",
                                 "use an unmodified checkpoint written by `mrtoct train`.")
        self.pixel_mm: float | None = pixel

    @property
    def in_channels(self) -> int:
        return 1 + 2 * self.context

    def to(self, device) -> "SynthesisModel":
        for net in self.networks.values():
            net.to(device)
            net.eval()
        return self

    def make_sampler(self, name: str | None, steps: int | None, **options):
        raise NotImplementedError

    def steps_for(self, name: str | None, steps: int | None, samples: int = 1) -> int | None:
        """The step count to build sampler ``name`` with for a run of ``samples`` Monte-Carlo samples: ``steps``
        when given; ``None`` (the sampler's default) otherwise. Diffusion methods override it where the default
        for a single sample would under-disperse the Monte-Carlo std (:data:`.conditional_diffusion.MC_STEPS`)."""
        return steps

    def sample(self, cond: torch.Tensor, sampler, generator: torch.Generator | None = None,
               x0_hook=None, cancel=None) -> SampleOutput:
        raise NotImplementedError
