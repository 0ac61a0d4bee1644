"""pix2pix baseline (conditional GAN; the supervised GAN DDMM-Synth compares against).

Generator: the engine's UNet without time embedding (same as the CNN, so the baselines differ only in
their losses). Discriminator: the 70x70 PatchGAN with batch normalisation, judging (MR, CT) pairs
stacked on the channel axis. Losses: binary cross-entropy (``gan_mode="vanilla"``; ``"lsgan"`` also
available) for both players, the discriminator loss halved, and ``l1_weight = 100`` times the L1 distance
to the paired CT for the generator. Adam lr 2e-4, betas (0.5, 0.999).

Checkpoint networks: ``generator`` (inference, EMA copy stored too) and ``discriminator`` (training resume
only). Inference is deterministic: one generator call, NFE = 1, std 0.
"""

from __future__ import annotations

from ..networks.gan import PatchDiscriminator, gan_preset
from .unet_cnn import DirectSynthesis, unet_generator


class Pix2Pix(DirectSynthesis):
    method = "pix2pix"
    network_roles = ("generator", "discriminator")
    default_method_config = {"lr": 2e-4, "betas": [0.5, 0.999], "l1_weight": 100.0, "gan_mode": "vanilla"}

    @classmethod
    def build_networks(cls, preset, overrides, image_size, context):
        d_cfg = gan_preset("patchgan", preset, **{"in_channels": 2 + 2 * context, "norm": "batch",
                                                  "image_size": image_size, **overrides.get("discriminator", {})})
        return {"generator": unet_generator(preset, 1 + 2 * context, image_size, overrides.get("generator")),
                "discriminator": PatchDiscriminator(d_cfg)}

    def train_step(self, state, data, generator):
        from ...training.adversarial import pix2pix_step

        return pix2pix_step(self, state, data, generator)
