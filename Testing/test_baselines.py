"""The CNN and GAN baselines (UNet-CNN, pix2pix, WGAN-GP, CycleGAN): networks, losses, one optimisation step
each, deterministic one-call inference, a short supervised training that learns, checkpoints and the CLI."""

import json
import math

import numpy as np
import pytest
import torch

from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.data.cases import Case, SliceDataset, UnpairedSliceDataset, case_slices
from MRtoCTSynthesisLib.data.phantom import generate_case
from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.io.volume import read_volume
from MRtoCTSynthesisLib.models.checkpoint import load_checkpoint
from MRtoCTSynthesisLib.models.losses import gan_loss, gradient_penalty, ns_discriminator_loss, ns_generator_loss
from MRtoCTSynthesisLib.models.methods import METHODS, create_model, load_model
from MRtoCTSynthesisLib.models.networks.gan import PatchDiscriminator, PatchGANConfig, ResnetGenerator, gan_preset
from MRtoCTSynthesisLib.training.loop import train_adversarial
from MRtoCTSynthesisLib.training.state import AdversarialSettings, make_train_state

BASELINES = ["unet_cnn", "pix2pix", "wgan_gp", "cyclegan"]
SAVED = {"unet_cnn": {"generator"}, "pix2pix": {"generator", "discriminator"}, "wgan_gp": {"generator", "critic"},
         "cyclegan": {"gen_ct", "gen_mr", "disc_ct", "disc_mr"}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Tiny networks gain nothing from a second thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def cases(tiny_phantom_cases):
    return tiny_phantom_cases


def _toy_pairs(n=8, size=32, context=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mr = torch.rand(n, 1 + 2 * context, size, size, generator=g) * 2 - 1
    return SliceDataset(mr, (-mr[:, context:context + 1]).clamp(-1, 1), ["toy"])


# ---------------------------------------------------------------------------------------------- losses
def test_gan_losses_have_their_textbook_values():
    zero, one = torch.zeros(4), torch.ones(4)
    assert float(gan_loss(zero, True, "vanilla")) == pytest.approx(math.log(2))
    assert float(gan_loss(one, True, "lsgan")) == 0.0 and float(gan_loss(one, False, "lsgan")) == 1.0
    assert float(ns_generator_loss(zero)) == pytest.approx(math.log(2))
    assert float(ns_discriminator_loss(zero, zero)) == pytest.approx(2 * math.log(2))
    with pytest.raises(InputError):
        gan_loss(zero, True, "hinge")


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5])
def test_wgan_gradient_penalty_equals_closed_form_on_a_linear_critic(scale):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 1, 8, 8, generator=g)
    w = w / w.norm() * scale  # ||w|| = scale

    def critic(x):  # grad = w everywhere, so ||grad|| = ||w||
        return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(5, 1, 8, 8, generator=g), torch.randn(5, 1, 8, 8, generator=g)
    assert float(gradient_penalty(critic, real, fake, weight=1.0,
                                  generator=g)) == pytest.approx((scale - 1) ** 2, rel=1e-5, abs=1e-10)
    assert float(gradient_penalty(critic, real, fake, weight=10.0,
                                  generator=g)) == pytest.approx(10 * (scale - 1) ** 2, rel=1e-5, abs=1e-9)


def test_gradient_penalty_trains_the_critic():
    critic = PatchDiscriminator(PatchGANConfig(in_channels=1, base_channels=4, norm="none"))
    real, fake = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    gp = gradient_penalty(lambda x: critic(x).mean(dim=(1, 2, 3)), real, fake)
    grads = torch.autograd.grad(gp, list(critic.parameters()), allow_unused=True)  # biases do not enter the GP
    assert float(gp.detach()) > 0 and sum(float(x.abs().sum()) for x in grads if x is not None) > 0


# ---------------------------------------------------------------------------------------------- networks
def test_patchgan_sees_70x70_patches():
    torch.manual_seed(0)
    d = PatchDiscriminator(PatchGANConfig(in_channels=1, base_channels=4, norm="none"))
    x = torch.zeros(1, 1, 160, 160, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = np.flatnonzero(x.grad[0, 0].abs().sum(1).numpy())
    cols = np.flatnonzero(x.grad[0, 0].abs().sum(0).numpy())
    assert rows[-1] - rows[0] + 1 == 70 and cols[-1] - cols[0] + 1 == 70


def test_resnet_generator_shapes_and_range():
    g = ResnetGenerator(gan_preset("resnet_generator", "tiny", image_size=32))
    y = g(torch.randn(3, 1, 32, 32) * 5)
    assert y.shape == (3, 1, 32, 32) and float(y.detach().abs().max()) <= 1.0
    with pytest.raises(InputError):
        g(torch.randn(1, 1, 30, 30))


# ---------------------------------------------------------------------------------------------- methods
@pytest.mark.parametrize("method, context", [("unet_cnn", 0), ("pix2pix", 0), ("wgan_gp", 0), ("cyclegan", 0),
                                             ("pix2pix", 1)])
def test_one_step_trains_every_network_and_inference_is_one_deterministic_call(method, context):
    torch.manual_seed(0)
    model = create_model(method, 32, context=context)
    assert set(model.networks) == SAVED[method]
    for net in model.networks.values():
        net.train()
    data = _toy_pairs(context=context)
    if model.unpaired:
        data = UnpairedSliceDataset.from_paired(data)
    state = make_train_state(model, AdversarialSettings(batch_size=2))
    before = {n: [p.detach().clone() for p in net.parameters()] for n, net in model.networks.items()}
    out = model.train_step(state, data, torch.Generator().manual_seed(0))
    assert "loss" in out and all(math.isfinite(v) for v in out.values())
    for n, net in model.networks.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[n], net.parameters())), n
    model.to("cpu")
    sampler = model.make_sampler(None, None)
    assert (sampler.name, sampler.steps) == ("direct", 1)
    cond = data.mr[:3]
    with torch.no_grad():
        a = model.sample(cond, sampler, generator=torch.Generator().manual_seed(0))
        b = model.sample(cond, sampler, generator=torch.Generator().manual_seed(1))
    assert a.x0.shape == (3, 1, 32, 32) and a.nfe == b.nfe == 1 and torch.equal(a.x0, b.x0)
    for name, steps in (("ddim", None), ("syndiff", None), (None, 20)):
        with pytest.raises(InputError):
            model.make_sampler(name, steps)
    with pytest.raises(InputError):
        model.sample(cond, sampler, x0_hook=lambda x0, x_t, t: x0)


def test_method_options_and_registry():
    assert set(BASELINES) | {"syndiff", "ddpm", "score_sde"} <= set(METHODS)
    m = create_model("wgan_gp", 32, options={"mse_weight": 10.0})
    assert m.method_config == {"lr": 1e-4, "betas": [0.9, 0.999], "gp_weight": 10.0, "mse_weight": 10.0, "n_critic": 5}
    assert create_model("pix2pix", 32).method_config["l1_weight"] == 100.0
    cyc = create_model("cyclegan", 32).method_config
    assert (cyc["lambda_cycle"], cyc["lambda_identity"], cyc["gan_mode"]) == (10.0, 0.5, "lsgan")
    with pytest.raises(InputError):
        create_model("pix2pix", 32, options={"l2_weight": 1})
    with pytest.raises(InputError):
        create_model("cyclegan", 32, context=1)
    with pytest.raises(InputError):  # paired methods refuse unpaired data
        train_adversarial(create_model("unet_cnn", 32), UnpairedSliceDataset.from_paired(_toy_pairs()),
                          AdversarialSettings(steps=1, batch_size=2))


def test_unet_cnn_learns_phantom_pairs():
    ph = generate_case(3, size=(32, 32, 12), spacing=(11.0, 11.0, 12.0))
    mr, ct = case_slices(Case("p", ph.mr("t2"), ph.ct, ph.mask), 32)
    small = {"base_channels": 8, "channel_mults": [1, 2], "attention_levels": [], "attention_heads": 1}
    model = create_model("unet_cnn", 32, unet=small)
    settings = AdversarialSettings(steps=100, batch_size=4, lr=2e-3, ema_decay=0.0)  # EMA is not under test
    hist = train_adversarial(model, SliceDataset(mr, ct, ["p"]), settings)
    first, last = np.mean(hist["loss"][:20]), np.mean(hist["loss"][-20:])
    assert last < 0.1 * first, (first, last)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("method", BASELINES)
def test_cli_train_save_load_synthesize(method, cases, tmp_path):
    ckpt = tmp_path / f"{method}.safetensors"
    assert main(["train", "--method", method, "--data", str(cases), "--out", str(ckpt), "--image-size", "32",
                 "--steps", "2", "--batch-size", "2"]) == 0
    ck = load_checkpoint(ckpt)
    assert ck.metadata["method"] == method and set(ck.metadata["network"]) == SAVED[method]
    inference_net = {"cyclegan": "gen_ct"}.get(method, "generator")
    assert ck.has_ema(inference_net) and ck.metadata["training"]["unpaired"] == (method == "cyclegan")
    model = load_model(ckpt)
    assert model.method == method and type(model) is METHODS[method]
    mr = cases / "case_000" / "mr.nii.gz"
    out_ct, out_std, info = tmp_path / "sct.nii.gz", tmp_path / "std.nii.gz", tmp_path / "info.json"
    assert main(["synthesize", "--mri", str(mr), "--model", str(ckpt), "--out-ct", str(out_ct),
                 "--out-std", str(out_std), "--samples", "2", "--info-json", str(info)]) == 0
    run = json.loads(info.read_text())
    assert (run["sampler"], run["steps"], run["nfe_per_sample"]) == ("direct", 1, 1)
    assert read_volume(out_ct).geometry.matches(read_volume(mr).geometry)
    assert float(np.abs(read_volume(out_std).array).max()) == 0.0  # deterministic: K samples agree
    assert main(["synthesize", "--mri", str(mr), "--model", str(ckpt), "--out-ct", str(out_ct),
                 "--steps", "20"]) == 2
