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
        from ...training.adversarial import cyclegan_step

        return cyclegan_step(self, state, data, generator)
