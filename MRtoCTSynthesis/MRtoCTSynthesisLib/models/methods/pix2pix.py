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

import torch

from ..losses import batch_on_device, gan_loss, set_requires_grad
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
        """D on (MR, CT) pairs with the ``gan_mode`` loss (halved), then G with adversarial + ``l1_weight`` * L1."""
        cfg = self.method_config
        d = self.networks["discriminator"]
        mr, ct = batch_on_device(data, state, generator)
        fake = self.predict(mr).float()
        set_requires_grad([d], True)
        loss_d = 0.5 * (gan_loss(d(torch.cat([mr, ct], 1)), True, cfg["gan_mode"])
                        + gan_loss(d(torch.cat([mr, fake.detach()], 1)), False, cfg["gan_mode"]))
        state.update("discriminator", loss_d)
        set_requires_grad([d], False)
        adv = gan_loss(d(torch.cat([mr, fake], 1)), True, cfg["gan_mode"])
        l1 = (fake - ct).abs().mean()
        loss_g = adv + cfg["l1_weight"] * l1
        state.update("generator", loss_g)
        set_requires_grad([d], True)
        return {"loss": loss_g.item(), "g_adv": adv.item(), "l1": l1.item(), "d": loss_d.item()}
