"""Volume synthesis: geometry, Monte-Carlo statistics, seeding, cancellation; a tiny model learns."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import rotation_direction

from MRtoCTSynthesisLib.data.cases import SliceDataset
from MRtoCTSynthesisLib.data.phantom import generate_case
from MRtoCTSynthesisLib.errors import CancelledError, InputError
from MRtoCTSynthesisLib.io.intensity import hu_to_model
from MRtoCTSynthesisLib.io.volume import write_volume
from MRtoCTSynthesisLib.models.methods import create_model, load_model, save_model
from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize
from MRtoCTSynthesisLib.pipeline.uncertainty import RunningMoments
from MRtoCTSynthesisLib.training.loop import TrainSettings, train_diffusion


@pytest.fixture(scope="module")
def oblique_mri():
    """An odd-sized, anisotropic, oblique MRI volume (real phantom anatomy)."""
    case = generate_case(3, size=(23, 19, 7), spacing=(14.0, 17.0, 9.0), direction=rotation_direction(5, -4, 8))
    return case.mr_t2


def _untrained(method="ddpm", size=16):
    torch.manual_seed(0)
    model = create_model(method, size)
    # perturb the zero-initialised output layer so the network's prediction depends on its input
    with torch.no_grad():
        for p in model.network.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("method", ["ddpm", "score_sde"])
def test_output_keeps_exact_geometry_and_std_semantics(oblique_mri, method):
    model = _untrained(method)
    one = synthesize(oblique_mri, model, SynthesisOptions(sampler="ddim", steps=3, samples=1, seed=1))
    assert one.sct.geometry == oblique_mri.geometry and one.std.geometry == oblique_mri.geometry
    assert one.sct.array.shape == oblique_mri.array.shape
    assert np.all(one.std.array == 0)  # K = 1: no spread
    assert one.sct.array.min() >= -1024 and one.sct.array.max() <= 3071
    many = synthesize(oblique_mri, model, SynthesisOptions(sampler="ddpm", steps=4, samples=3, seed=1))
    assert many.std.array.mean() > 1.0  # K > 1 with a stochastic sampler: positive spread (HU)


def test_same_seed_same_output_other_seed_differs(oblique_mri):
    model = _untrained()
    opts = dict(sampler="ddpm", steps=4, samples=2, batch_size=5)
    a = synthesize(oblique_mri, model, SynthesisOptions(seed=7, **opts))
    b = synthesize(oblique_mri, model, SynthesisOptions(seed=7, **opts))
    c = synthesize(oblique_mri, model, SynthesisOptions(seed=8, **opts))
    np.testing.assert_array_equal(a.sct.array, b.sct.array)
    assert np.abs(a.sct.array - c.sct.array).max() > 0


def test_written_output_reads_back_on_the_mri_grid(tmp_path, oblique_mri):
    res = synthesize(oblique_mri, _untrained(), SynthesisOptions(sampler="ddim", steps=2))
    write_volume(res.sct, tmp_path / "sct.nrrd")
    img = sitk.ReadImage(str(tmp_path / "sct.nrrd"))
    ref = oblique_mri.to_sitk()
    np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-6)


def test_cancel_and_bad_options(oblique_mri):
    model = _untrained()
    with pytest.raises(CancelledError):
        synthesize(oblique_mri, model, SynthesisOptions(sampler="ddim", steps=2), cancel=lambda: True)
    for bad in (dict(samples=0), dict(steps=0), dict(batch_size=0), dict(sampler="nope")):
        with pytest.raises(InputError):
            synthesize(oblique_mri, model, SynthesisOptions(**bad))


def test_running_moments_match_numpy():
    rng = np.random.default_rng(0)
    samples = rng.uniform(-1, 1, size=(5, 3, 1, 4, 4))  # K=5 samples of 3 items
    rm = RunningMoments((3, 1, 4, 4))
    order = rng.permutation(15)  # arrive in any order, repeated items within a batch
    flat_idx = np.tile(np.arange(3), 5)[order]
    flat_val = samples.reshape(15, 1, 4, 4)[order]
    for s in range(0, 15, 4):
        rm.update(torch.as_tensor(flat_idx[s:s + 4]), torch.as_tensor(flat_val[s:s + 4]))
    np.testing.assert_allclose(rm.mean().numpy(), samples.mean(0), atol=1e-12)
    np.testing.assert_allclose(rm.std().numpy(), samples.std(0, ddof=1), atol=1e-12)  # unbiased (Bessel) by default
    np.testing.assert_allclose(rm.std(ddof=0).numpy(), samples.std(0), atol=1e-12)
    one = RunningMoments((2, 1, 4, 4))  # K = 1: no spread can be estimated, the std is exactly 0
    one.update(torch.as_tensor([0, 1]), torch.as_tensor(samples[0, :2]))
    assert float(one.std().abs().max()) == 0.0


def _psnr_model_range(pred, ref):
    return 10 * np.log10(4.0 / np.mean((pred - ref) ** 2))


def test_tiny_training_lowers_loss_and_beats_untrained(tmp_path):
    """A few hundred steps on phantom slices: loss falls and samples get closer to the true CT."""
    torch.manual_seed(0)
    cases = [generate_case(s, size=(32, 32, 12), spacing=(11.0, 11.0, 10.0)) for s in range(3)]
    for i, c in enumerate(cases):
        d = tmp_path / f"case_{i}"
        d.mkdir()
        write_volume(c.mr_t2, d / "mr.nii.gz")
        write_volume(c.ct, d / "ct.nii.gz")
        write_volume(c.mask, d / "mask.nii.gz")
    data = SliceDataset.from_folders([tmp_path / f"case_{i}" for i in range(2)], image_size=32)
    model = create_model("ddpm", 32)
    before = create_model("ddpm", 32)
    before.network.load_state_dict(model.network.state_dict())
    hist = train_diffusion(model, data, TrainSettings(steps=300, batch_size=8, lr=1e-3, ema_decay=0.99, seed=0,
                                                      lr_warmup=20))
    loss = np.asarray(hist["loss"])
    assert loss[-50:].mean() < 0.6 * loss[:20].mean()

    ckpt = save_model(model, tmp_path / "m.safetensors", ema={"denoiser": hist["ema"]})
    trained = load_model(ckpt)
    test = cases[2]
    truth = hu_to_model(test.ct.array)
    body = test.mask.array > 0
    opts = SynthesisOptions(sampler="ddim", steps=20, samples=2, seed=0)
    p_trained = _psnr_model_range(hu_to_model(synthesize(test.mr_t2, trained, opts).sct.array)[body], truth[body])
    p_before = _psnr_model_range(hu_to_model(synthesize(test.mr_t2, before, opts).sct.array)[body], truth[body])
    assert p_trained > p_before + 3.0, (p_trained, p_before)


def test_ema_update_is_the_closed_form_average():
    from MRtoCTSynthesisLib.training.state import EMA

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    ema = EMA(net, decay=0.9)
    before = [p.detach().clone() for p in ema.shadow.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        net[1].running_mean.fill_(3.0)
    ema.update(net, step=10_000)  # past warm-up: decay = 0.9
    for b, s, p in zip(before, ema.shadow.parameters(), net.parameters()):
        torch.testing.assert_close(s, 0.9 * b + 0.1 * p)
    assert torch.all(ema.shadow[1].running_mean == 3.0)  # buffers are copied, not averaged
    ema2 = EMA(net, decay=0.999)
    ema2.update(net, step=0)  # warm-up: decay = min(0.999, 1/10) -> mostly the new weights
    for s, p in zip(ema2.shadow.parameters(), net.parameters()):
        torch.testing.assert_close(s, p)


@pytest.mark.parametrize("process_cfg", [{"kind": "vp", "schedule": "linear", "T": 1000},
                                         {"kind": "ve", "schedule": "lyu", "sigma": 25.0}])
def test_v_parameterisation_inverts_exactly(process_cfg):
    from MRtoCTSynthesisLib.models.diffusion import make_process
    from MRtoCTSynthesisLib.models.methods.conditional_diffusion import eps_from_v, v_target

    proc = make_process(process_cfg)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(5, 1, 8, 8, generator=g) * 2 - 1, torch.randn(5, 1, 8, 8, generator=g)
    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 1.0])
    a = proc.alpha(t).float().view(-1, 1, 1, 1)
    s = proc.sigma(t).float().view(-1, 1, 1, 1)
    x_t = a * x0 + s * eps
    v = v_target(proc, x0, eps, t)
    torch.testing.assert_close(v, a * eps - s * x0)
    torch.testing.assert_close(eps_from_v(proc, x_t, v, t), eps, atol=1e-4, rtol=1e-4)
