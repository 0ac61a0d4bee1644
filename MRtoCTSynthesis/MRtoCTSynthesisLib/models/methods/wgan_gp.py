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

import torch
import torch.nn.functional as F

from ..losses import batch_on_device, gradient_penalty, set_requires_grad
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
        """WGAN-GP (Gulrajani et al. Alg. 1 with a conditional critic) + MSE fidelity (Lyu & Wang).

        ``n_critic`` critic updates, each on a fresh batch: ``C(MR, G(MR)) - C(MR, CT) + 10 GP``; then one
        generator update on a fresh batch: ``-C(MR, G(MR)) + mse_weight * MSE(G(MR), CT)``.
        """
        cfg = self.method_config
        critic = self.networks["critic"]

        def score(mr, ct):
            return critic(torch.cat([mr, ct], 1)).float().mean(dim=(1, 2, 3))

        set_requires_grad([critic], True)
        for _ in range(int(cfg["n_critic"])):
            mr, ct = batch_on_device(data, state, generator)
            with torch.no_grad():
                fake = self.predict(mr).float()
            w_dist = score(mr, ct).mean() - score(mr, fake).mean()
            gp = gradient_penalty(lambda x, mr=mr: score(mr, x), ct, fake, cfg["gp_weight"], generator=generator)
            loss_c = -w_dist + gp
            state.update("critic", loss_c)
        set_requires_grad([critic], False)
        mr, ct = batch_on_device(data, state, generator)
        fake = self.predict(mr).float()
        adv = -score(mr, fake).mean()
        mse = F.mse_loss(fake, ct)
        loss_g = adv + cfg["mse_weight"] * mse
        state.update("generator", loss_g)
        set_requires_grad([critic], True)
        return {"loss": loss_g.item(), "g_adv": adv.item(), "mse": mse.item(), "critic": loss_c.item(),
                "gp": gp.item(), "w_distance": w_dist.item()}
