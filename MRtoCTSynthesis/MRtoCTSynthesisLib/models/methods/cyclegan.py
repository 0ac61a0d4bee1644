"""CycleGAN baseline (unpaired; the "cGAN" competitor of SynDiff Sec. IV-B.2).

Two ResNet generators, ``gen_ct`` (MR -> CT, the one inference uses) and ``gen_mr`` (CT -> MR), and two
70x70 PatchGAN discriminators with instance normalisation, ``disc_ct`` and ``disc_mr``. Losses: least
squares GAN (``gan_mode="lsgan"``), cycle consistency L1 with ``lambda_cycle = 10`` and identity L1 with
weight ``lambda_identity * lambda_cycle = 0.5 * 10``; discriminators see fakes through a 50-image history
pool and their loss is halved. Adam lr 2e-4, betas (0.5, 0.999) (the linear learning-rate decay over the
second half of training used by CycleGAN is not applied by the engine loop).

Trains on unpaired slices (:class:`~..data.UnpairedSliceDataset`); single slices only (context 0: the
generators map one image to one image in both directions). Checkpoint networks: ``gen_ct`` (inference,
with EMA copy); ``gen_mr``, ``disc_ct``, ``disc_mr`` (training resume only). Inference is deterministic:
one ``gen_ct`` call, NFE = 1, std 0.
"""

from __future__ import annotations

import torch

from ..losses import ImagePool, batch_on_device, gan_loss, set_requires_grad
from ..networks.gan import PatchDiscriminator, ResnetGenerator, gan_preset
from .unet_cnn import DirectSynthesis


class CycleGAN(DirectSynthesis):
    method = "cyclegan"
    unpaired = True
    supports_context = False
    inference_networks = ("gen_ct",)
    network_roles = ("gen_ct", "gen_mr", "disc_ct", "disc_mr")
    default_method_config = {"lr": 2e-4, "betas": [0.5, 0.999], "lambda_cycle": 10.0, "lambda_identity": 0.5,
                             "gan_mode": "lsgan", "pool_size": 50}

    @classmethod
    def build_networks(cls, preset, overrides, image_size, context):
        nets = {}
        for name in ("gen_ct", "gen_mr"):
            nets[name] = ResnetGenerator(gan_preset("resnet_generator", preset, **{
                "in_channels": 1, "out_channels": 1, "image_size": image_size, **overrides.get(name, {})}))
        for name in ("disc_ct", "disc_mr"):
            nets[name] = PatchDiscriminator(gan_preset("patchgan", preset, **{
                "in_channels": 1, "norm": "instance", "image_size": image_size, **overrides.get(name, {})}))
        return nets

    def optimizer_groups(self):
        return {"generators": ["gen_ct", "gen_mr"], "discriminators": ["disc_ct", "disc_mr"]}

    def predict(self, cond):
        return self.networks["gen_ct"](cond)

    def train_step(self, state, data, generator):
        """LSGAN + ``lambda_cycle`` * cycle L1 + ``lambda_identity * lambda_cycle`` * identity L1 for both generators
        (one Adam), then both discriminators on pooled fakes (halved loss)."""
        cfg = self.method_config
        g_ct, g_mr = self.networks["gen_ct"], self.networks["gen_mr"]
        d_ct, d_mr = self.networks["disc_ct"], self.networks["disc_mr"]
        mr, ct = batch_on_device(data, state, generator)
        lam, lam_id, mode = cfg["lambda_cycle"], cfg["lambda_identity"], cfg["gan_mode"]
        fake_ct, fake_mr = g_ct(mr), g_mr(ct)
        rec_mr, rec_ct = g_mr(fake_ct), g_ct(fake_mr)
        set_requires_grad([d_ct, d_mr], False)
        adv = gan_loss(d_ct(fake_ct), True, mode) + gan_loss(d_mr(fake_mr), True, mode)
        cyc = (rec_mr - mr).abs().mean() + (rec_ct - ct).abs().mean()
        loss_g = adv + lam * cyc
        idt = torch.zeros((), device=mr.device)
        if lam_id > 0:
            idt = (g_ct(ct) - ct).abs().mean() + (g_mr(mr) - mr).abs().mean()
            loss_g = loss_g + lam * lam_id * idt
        state.update("generators", loss_g)
        set_requires_grad([d_ct, d_mr], True)
        pools = state.pools
        if not pools:
            pools.update(ct=ImagePool(cfg["pool_size"]), mr=ImagePool(cfg["pool_size"]))
        old_ct, old_mr = pools["ct"].query(fake_ct, generator), pools["mr"].query(fake_mr, generator)
        loss_d = 0.5 * (gan_loss(d_ct(ct), True, mode) + gan_loss(d_ct(old_ct), False, mode)) \
            + 0.5 * (gan_loss(d_mr(mr), True, mode) + gan_loss(d_mr(old_mr), False, mode))
        state.update("discriminators", loss_d)
        return {"loss": loss_g.item(), "g_adv": adv.item(), "cycle": cyc.item(), "identity": idt.item(),
                "d": loss_d.item()}
