"""WGAN-GP baseline (Lyu & Wang Sec. IV: "Wasserstein distance and gradient penalty ... with UNet as the
generator and MSE as data fidelity measure").

Generator: the engine's UNet without time embedding (as Lyu & Wang). Critic: a conditional PatchGAN
(70x70 patches, no normalisation, since the gradient penalty is per sample) on (MR, CT) pairs, its patch
scores averaged into one score per slice. Each training step makes ``n_critic = 5`` critic updates on
``C(MR, G(MR)) - C(MR, CT) + gp_weight * GP`` with ``gp_weight = 10`` (Gulrajani et al.), then one generator
update on ``-C(MR, G(MR)) + mse_weight * MSE(G(MR), CT)``.

``mse_weight = 100`` (MSE in model units, [-1, 1]) is our choice: Lyu & Wang do not report the weight of
their MSE fidelity term. It is stored in the checkpoint and can be changed with ``create_model(...,
options={"mse_weight": ...})``. Adam lr 1e-4, betas (0.9, 0.999), eps 1e-8, as Lyu & Wang use for all
their methods.

Checkpoint networks: ``generator`` (inference, with EMA copy) and ``critic`` (training resume only).
"""

from __future__ import annotations

from ..networks.gan import PatchDiscriminator, gan_preset
from .unet_cnn import DirectSynthesis, unet_generator


class WGANGP(DirectSynthesis):
    method = "wgan_gp"
    network_roles = ("generator", "critic")
    default_method_config = {"lr": 1e-4, "betas": [0.9, 0.999], "gp_weight": 10.0, "mse_weight": 100.0,
                             "n_critic": 5}

    @classmethod
    def build_networks(cls, preset, overrides, image_size, context):
        c_cfg = gan_preset("patchgan", preset, **{"in_channels": 2 + 2 * context, "norm": "none",
                                                  "image_size": image_size, **overrides.get("critic", {})})
        return {"generator": unet_generator(preset, 1 + 2 * context, image_size, overrides.get("generator")),
                "critic": PatchDiscriminator(c_cfg)}

    def train_step(self, state, data, generator):
        from ...training.adversarial import wgan_gp_step

        return wgan_gp_step(self, state, data, generator)
