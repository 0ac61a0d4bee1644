"""SynDiff: the fast schedule and its posterior (SynDiff Eqs. 8-15), the adversarial projector's sampling
(exactly T/k generator calls), the R1 penalty, unpaired data, one training step, checkpoints and the CLI."""

import json
import math

import numpy as np
import pytest
import torch

from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.data.cases import SliceDataset, UnpairedSliceDataset, find_cases
from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.io.volume import read_volume
from MRtoCTSynthesisLib.models.checkpoint import load_checkpoint
from MRtoCTSynthesisLib.models.losses import r1_penalty
from MRtoCTSynthesisLib.models.methods import create_model, load_model, save_model
from MRtoCTSynthesisLib.models.methods.syndiff import FastDiffusionSchedule, SynDiff, syndiff_train_step
from MRtoCTSynthesisLib.models.networks.gan import TimeConditionedDiscriminator, gan_preset
from MRtoCTSynthesisLib.training.loop import train_adversarial
from MRtoCTSynthesisLib.training.state import AdversarialSettings, make_train_state

NETS = {"diff_gen_ct", "diff_gen_mr", "diff_disc_ct", "diff_disc_mr", "nd_gen_ct", "nd_gen_mr", "nd_disc_ct",
        "nd_disc_mr"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Tiny networks gain nothing from a second thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def cases(tiny_phantom_cases):
    return tiny_phantom_cases


def _toy_unpaired(n=12, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mr = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    return UnpairedSliceDataset(mr, (-mr).clamp(-1, 1))


# ---------------------------------------------------------------------------------------------- schedule
def test_schedule_is_eq10_with_four_steps():
    s = FastDiffusionSchedule()  # T = 1000, k = 250, beta 0.1 .. 20
    assert s.n_steps == 4
    for i in range(1, 5):
        t, k, T = 250 * i, 250, 1000
        expected = 1 - math.exp(-0.1 * k / T - (20 - 0.1) * (2 * t * k - k * k) / (2 * T * T))
        assert float(s.gamma[i]) == pytest.approx(expected, rel=1e-12)
    assert np.all(np.diff(s.gamma[1:].numpy()) > 0)  # noise grows along the chain
    # the steps compose to the integral of the linear beta over [0, 1]: abar_N = exp(-(b_min + b_max) / 2)
    assert float(s.alpha_bar[-1]) == pytest.approx(math.exp(-(0.1 + 20) / 2), rel=1e-12)
    assert s.time_condition(torch.tensor([1, 4])).tolist() == [250.0, 1000.0]
    with pytest.raises(InputError):
        FastDiffusionSchedule(T=1000, k=300)


def test_forward_steps_compose_to_the_marginal():
    s, n = FastDiffusionSchedule(), 200_000
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((n,), 0.6, dtype=torch.float64)
    for i in range(1, 5):
        x_prev = s.q_sample(x0, torch.full((n,), i - 1), torch.randn(n, generator=g, dtype=torch.float64))
        x_t = s.q_step(x_prev, i, torch.randn(n, generator=g, dtype=torch.float64))
        ab = float(s.alpha_bar[i])
        assert float(x_t.mean()) == pytest.approx(math.sqrt(ab) * 0.6, abs=0.01)
        assert float(x_t.var()) == pytest.approx(1 - ab, abs=0.01)


def test_posterior_matches_gaussian_conditioning_and_monte_carlo():
    """Eq. 14 vs (a) conditioning the joint Gaussian of (x_{t-k}, x_t) | x0 in closed form, (b) regression on
    samples."""
    s, n, x0v = FastDiffusionSchedule(), 400_000, -0.3
    g = torch.Generator().manual_seed(2)
    x0 = torch.full((n,), x0v, dtype=torch.float64)
    for i in range(1, 5):
        c0, ct, var = (float(v) for v in s.posterior_coefficients(i))
        ab, ab_prev, a = (float(s.alpha_bar[i]), float(s.alpha_bar[i - 1]), float(s.alpha[i]))
        cov = math.sqrt(a) * (1 - ab_prev)          # Cov(x_{t-k}, x_t | x0)
        slope = cov / (1 - ab)                     # E[x_{t-k} | x_t] = m_prev + slope (x_t - m_t)
        assert ct == pytest.approx(slope, rel=1e-12, abs=1e-15)
        assert c0 * x0v == pytest.approx(math.sqrt(ab_prev) * x0v - slope * math.sqrt(ab) * x0v, rel=1e-10, abs=1e-15)
        assert var == pytest.approx((1 - ab_prev) - cov * cov / (1 - ab), rel=1e-10, abs=1e-15)
        # Monte-Carlo: simulate the forward chain, regress x_{t-k} on x_t
        x_prev = s.q_sample(x0, i - 1, torch.randn(n, generator=g, dtype=torch.float64))
        x_t = s.q_step(x_prev, i, torch.randn(n, generator=g, dtype=torch.float64))
        if i == 1:
            assert var == 0.0 and c0 == pytest.approx(1.0)
            continue
        xt_c = x_t - x_t.mean()
        b = float((xt_c * (x_prev - x_prev.mean())).sum() / (xt_c * xt_c).sum())
        intercept = float(x_prev.mean() - b * x_t.mean())
        resid = float((x_prev - intercept - b * x_t).var())
        assert b == pytest.approx(ct, abs=0.01)
        assert intercept == pytest.approx(c0 * x0v, abs=0.01)
        assert resid == pytest.approx(var, rel=0.02)
        mean, v = s.posterior(x_t[:5], x0[:5], i)
        assert torch.allclose(mean, c0 * x0[:5] + ct * x_t[:5]) and float(v) == pytest.approx(var)
        mean_b, v_b = s.posterior(x_t[:5], x0[:5], torch.full((5,), i))  # the per-sample (training) path
        assert torch.allclose(mean_b.reshape(-1),
                              mean) and torch.allclose(v_b.reshape(-1), torch.full((5,), var, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("k, calls", [(250, 4), (125, 8)])
def test_sampling_calls_the_generator_exactly_t_over_k_times(k, calls):
    model = create_model("syndiff", 32, process={"k": k}).to("cpu")
    seen = []
    model.networks["diff_gen_ct"].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    sampler = model.make_sampler(None, None)
    assert (sampler.name, sampler.steps) == ("syndiff", calls)
    with torch.no_grad():
        out = model.sample(torch.zeros(3, 1, 32, 32), sampler, generator=torch.Generator().manual_seed(0))
    assert len(seen) == calls and out.nfe == calls and seen == [3] * calls
    assert out.x0.shape == (3, 1, 32, 32) and out.x0.abs().max() <= 1


def test_sampling_is_seeded_stochastic_and_hookable():
    model = create_model("syndiff", 32).to("cpu")
    cond = torch.rand(2, 1, 32, 32) * 2 - 1
    sampler = model.make_sampler("syndiff", 4)

    def run(seed, hook=None):
        with torch.no_grad():
            return model.sample(cond, sampler, generator=torch.Generator().manual_seed(seed), x0_hook=hook).x0

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))  # fresh latents / noise -> a Monte-Carlo std > 0
    times = []

    def hook(x0, x_t, t):
        times.append(float(t[0]))
        return torch.zeros_like(x0)

    assert torch.equal(run(0, hook), torch.zeros(2, 1, 32, 32)) and times == [1.0, 0.75, 0.5, 0.25]


def test_sampler_choice_is_checked():
    model = create_model("syndiff", 32)
    for name, steps in (("ddim", None), ("dpmpp", None), (None, 10), ("syndiff", 1)):
        with pytest.raises(InputError):
            model.make_sampler(name, steps)
    with pytest.raises(InputError):
        create_model("syndiff", 32, context=1)  # the cycle maps one slice to one slice


# ---------------------------------------------------------------------------------------------- losses / step
def test_r1_penalty_is_positive_exact_and_trains_the_discriminator():
    torch.manual_seed(0)
    d = TimeConditionedDiscriminator(gan_preset("time_discriminator", "tiny", in_channels=2, image_size=32))
    real = torch.randn(3, 1, 32, 32).requires_grad_(True)
    x_t = torch.randn(3, 1, 32, 32)
    t = torch.tensor([250.0, 500.0, 1000.0])
    logits = d(torch.cat([real, x_t], 1), t)
    pen = r1_penalty(logits, real, weight=0.5)
    (g,) = torch.autograd.grad(d(torch.cat([real, x_t], 1), t).sum(), real)
    assert float(pen.detach()) > 0
    assert float(pen.detach()) == pytest.approx(float(0.25 * g.pow(2).flatten(1).sum(1).mean()), rel=1e-5)
    grads = torch.autograd.grad(pen, list(d.parameters()), allow_unused=True)
    assert sum(float(x.abs().sum()) for x in grads if x is not None) > 0


def test_one_train_step_updates_all_eight_networks():
    torch.manual_seed(0)
    model = create_model("syndiff", 32)
    for net in model.networks.values():
        net.train()
    state = make_train_state(model, AdversarialSettings(batch_size=2))
    before = {n: [p.detach().clone() for p in net.parameters()] for n, net in model.networks.items()}
    out = syndiff_train_step(model, state, _toy_unpaired(), torch.Generator().manual_seed(0))
    assert {"loss", "g_adv_nd", "g_adv_diff", "cycle_nd", "cycle_diff", "d_nd", "d_diff", "r1"} <= set(out)
    assert all(math.isfinite(v) for v in out.values()) and out["r1"] > 0
    for n, net in model.networks.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[n], net.parameters())), n
    # Eq. 23 with lambda_1 = 0.5, lambda_2 = 1
    expected = out["g_adv_nd"] + out["g_adv_diff"] + 0.5 * (out["cycle_nd"] + out["cycle_diff"])
    assert out["loss"] == pytest.approx(expected, rel=1e-5)


def test_paired_variant_conditions_on_the_real_mr_with_an_l1_loss():
    """SynDiff Sec. V-C: the real source image conditions the generator; a pixel-wise loss replaces the cycle."""
    torch.manual_seed(0)
    model = create_model("syndiff", 32, options={"paired": True})
    assert set(model.networks) == {"diff_gen_ct", "diff_disc_ct"} and not model.unpaired
    for net in model.networks.values():
        net.train()
    g = torch.Generator().manual_seed(1)
    mr = torch.rand(6, 1, 32, 32, generator=g) * 2 - 1
    data = SliceDataset(mr, (-mr).clamp(-1, 1), ["toy"])
    state = make_train_state(model, AdversarialSettings(batch_size=3))
    seen = []
    gen_ct = model.networks["diff_gen_ct"]
    hook = gen_ct.register_forward_hook(lambda m, args, out: seen.append((args[1].detach().clone(), out.detach())))
    before = {n: [p.detach().clone() for p in net.parameters()] for n, net in model.networks.items()}
    out = model.train_step(state, data, torch.Generator().manual_seed(0))
    hook.remove()
    (cond, x0), = seen
    batch_mr, batch_ct = data.batch(3, torch.Generator().manual_seed(0))  # the same draw the step made
    assert torch.equal(cond, batch_mr)
    assert out["l1"] == pytest.approx(float((batch_ct - x0).abs().mean()), rel=1e-5)
    assert out["loss"] == pytest.approx(out["g_adv_diff"] + 0.5 * out["l1"], rel=1e-5)
    for n, net in model.networks.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[n], net.parameters())), n
    with pytest.raises(InputError, match="paired"):
        train_adversarial(model, _toy_unpaired(), AdversarialSettings(steps=1, batch_size=2))


# ---------------------------------------------------------------------------------------------- data
def test_unpaired_loader_never_pairs_slices_by_index():
    ids = torch.arange(40, dtype=torch.float32).reshape(40, 1, 1, 1)
    paired = SliceDataset(ids, ids.clone(), ["ids"])  # pairing by index would give mr id == ct id
    gen = torch.Generator().manual_seed(0)
    mr, ct = paired.batch(64, gen)
    assert torch.equal(mr, ct)  # the paired loader pairs (sanity check of the construction)
    unpaired = UnpairedSliceDataset.from_paired(paired)
    mr_ids, ct_ids = [], []
    for _ in range(30):
        mr, ct = unpaired.batch(32, gen)
        mr_ids += mr.flatten().tolist()
        ct_ids += ct.flatten().tolist()
    mr_ids, ct_ids = np.array(mr_ids), np.array(ct_ids)
    assert np.mean(mr_ids == ct_ids) < 0.06  # independent draws: 1/40 expected, paired would be 1
    assert abs(np.corrcoef(mr_ids, ct_ids)[0, 1]) < 0.1
    assert len(set(mr_ids)) == 40 and len(set(ct_ids)) == 40


def test_unpaired_from_folders_can_use_disjoint_cases(cases):
    folders = find_cases(cases)
    both = UnpairedSliceDataset.from_folders(folders, 32)
    disjoint = UnpairedSliceDataset.from_folders(folders, 32, disjoint_cases=True)
    paired0 = SliceDataset.from_folders(folders[:1], 32)
    paired1 = SliceDataset.from_folders(folders[1:], 32)
    assert len(both.mr) == len(both.ct) == len(paired0) + len(paired1)
    assert torch.equal(disjoint.mr, paired0.mr) and torch.equal(disjoint.ct, paired1.ct)


# ---------------------------------------------------------------------------------------------- checkpoint / CLI
def test_checkpoint_round_trip_gives_identical_samples(tmp_path):
    model = create_model("syndiff", 32)
    hist = train_adversarial(model, _toy_unpaired(), AdversarialSettings(steps=1, batch_size=2))
    path = save_model(model, tmp_path / "s.safetensors", ema=hist["ema"])
    ck = load_checkpoint(path)
    assert set(ck.metadata["network"]) == NETS and ck.has_ema("diff_gen_ct")
    assert ck.metadata["process"] == {"kind": "syndiff", "T": 1000, "k": 250, "beta_min": 0.1, "beta_max": 20.0}
    assert ck.metadata["method_config"]["lambda_cycle"] == 0.5
    loaded = load_model(path)
    assert isinstance(loaded, SynDiff) and set(loaded.networks) == NETS
    cond = torch.rand(2, 1, 32, 32) * 2 - 1
    ema_model = SynDiff({**model.networks, "diff_gen_ct": hist["ema"]["diff_gen_ct"]}, model.metadata).to("cpu")
    with torch.no_grad():
        a = loaded.sample(cond, loaded.make_sampler(), generator=torch.Generator().manual_seed(3)).x0
        b = ema_model.sample(cond, ema_model.make_sampler(), generator=torch.Generator().manual_seed(3)).x0
    assert torch.equal(a, b)


def test_cli_trains_and_synthesizes_syndiff(cases, tmp_path):
    ckpt = tmp_path / "syndiff.safetensors"
    assert main(["train", "--method", "syndiff", "--data", str(cases), "--out", str(ckpt), "--image-size", "32",
                 "--steps", "2", "--batch-size", "2"]) == 0
    assert load_checkpoint(ckpt).metadata["training"]["unpaired"] is True
    mr = cases / "case_001" / "mr.nii.gz"
    out_ct, out_std, info = tmp_path / "sct.nii.gz", tmp_path / "std.nii.gz", tmp_path / "info.json"
    assert main(["synthesize", "--mri", str(mr), "--model", str(ckpt), "--out-ct", str(out_ct), "--out-std",
                 str(out_std), "--samples", "2", "--info-json", str(info)]) == 0
    run = json.loads(info.read_text())
    assert (run["method"], run["sampler"], run["steps"], run["nfe_per_sample"]) == ("syndiff", "syndiff", 4, 4)
    assert read_volume(out_ct).geometry.matches(read_volume(mr).geometry)
    assert read_volume(out_std).array.max() > 0  # two different samples per slice
    assert main(["synthesize", "--mri", str(mr), "--model", str(ckpt), "--out-ct", str(out_ct),
                 "--sampler", "ddim"]) == 2
    assert main(["train", "--method", "syndiff", "--data", str(cases), "--out", str(ckpt), "--image-size", "32",
                 "--steps", "1", "--context", "1"]) == 2
