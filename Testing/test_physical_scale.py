"""Physical-scale inference (io.slicing's physical grid, pipeline.synthesis with a recorded pixel size), the
space-to-depth UNet stem, and patch training at a pixel size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MRtoCTSynthesisLib.io.slicing import (
    foreground_box_mm,
    from_physical_grid,
    plan_physical_grid,
    resampling_matrix,
    to_canonical,
    to_physical_grid,
)
from MRtoCTSynthesisLib.io.volume import Volume, make_geometry
from MRtoCTSynthesisLib.models.methods import create_model
from MRtoCTSynthesisLib.models.networks import ConditionalUNet, UNetConfig, unet_preset
from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize

torch.set_num_threads(1)


def test_resampling_matrix_enlarging_is_numpy_linear_interpolation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=23)
    r, inside = resampling_matrix(23, 3.0, 40, 1.7, origin_out=-1.3)
    centres_out = -1.3 + (np.arange(40) + 0.5) * 1.7
    centres_in = (np.arange(23) + 0.5) * 3.0
    want = np.interp(centres_out, centres_in, x)  # clamps at the ends, as the matrix does inside the extent
    got = r.double().numpy() @ x
    ok = inside.numpy()
    assert ok.sum() == ((centres_out >= 0) & (centres_out <= 69.0)).sum()
    np.testing.assert_allclose(got[ok], want[ok], atol=1e-6)
    assert np.all(got[~ok] == 0)


@pytest.mark.parametrize("shape_in, shape_out", [((60, 40), (30, 20)), ((45, 33), (15, 11)), ((20, 30), (20, 30))])
def test_resampling_matrix_shrinking_matches_torch_antialiased_bilinear(shape_in, shape_out):
    """Same extent, coarser pixels: PyTorch's antialiased bilinear resize is the same triangle filter."""
    img = torch.rand(1, 1, *shape_in, generator=torch.Generator().manual_seed(1))
    ry, _ = resampling_matrix(shape_in[0], 1.0, shape_out[0], shape_in[0] / shape_out[0])
    rx, _ = resampling_matrix(shape_in[1], 1.0, shape_out[1], shape_in[1] / shape_out[1])
    got = ry @ img[0, 0] @ rx.T
    want = F.interpolate(img, size=shape_out, mode="bilinear", align_corners=False, antialias=True)[0, 0]
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def _volume(shape_zyx, spacing_xyz, fill=None, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    arr = fill if fill is not None else np.random.default_rng(2).random(shape_zyx).astype(np.float32)
    geom = make_geometry((shape_zyx[2], shape_zyx[1], shape_zyx[0]), spacing_xyz, (0, 0, 0), direction)
    return Volume(arr.astype(np.float32), geom)


def test_physical_grid_round_trip_and_pixel_size():
    v = _volume((4, 50, 70), (1.5, 1.5, 3.0))
    canon, lay = to_canonical(v.array, v.geometry)
    grid = plan_physical_grid(lay, 1.5, multiple=16)
    assert grid.shape == (64, 80) and grid.pixel_mm == 1.5
    x = to_physical_grid(canon, lay, grid)
    assert x.shape == (4, 1, 64, 80)
    np.testing.assert_allclose(from_physical_grid(x, lay, grid), canon, atol=1e-6)  # aligned grid: exact
    # coarser model pixels: the canvas covers the slice (plus rounding), pixels outside get the pad value
    grid2 = plan_physical_grid(lay, 2.0, multiple=16)
    assert grid2.extent_mm[0] >= 50 * 1.5 and grid2.extent_mm[1] >= 70 * 1.5
    x2 = to_physical_grid(canon, lay, grid2, pad_value=-1.0)
    assert x2.shape[-2:] == grid2.shape and float(x2[0, 0, 0, 0]) == -1.0


def test_same_anatomy_at_two_spacings_reaches_the_network_at_one_scale():
    """A 200 mm disc imaged at 1 mm and at 4 mm pixels: the model (2 mm pixels) gets canvases of the same
    size with the disc at the same size, so the network sees one physical scale."""
    seen = []

    def disc(n, s):
        c = (np.arange(n) + 0.5) * s - n * s / 2
        yy, xx = np.meshgrid(c, c, indexing="ij")
        a = np.where(yy ** 2 + xx ** 2 < 100.0 ** 2, 1000.0, 0.0).astype(np.float32)
        return np.repeat(a[None], 2, axis=0)

    model = create_model("ddpm", 64, unet=dict(channel_mults=(1, 2), attention_levels=()), pixel_mm=2.0)
    net = model.network
    hook = net.register_forward_hook(lambda m, inp, out: seen.append(inp[1].detach().clone()))
    try:
        for n, s in ((300, 1.0), (75, 4.0)):
            mri = _volume((2, n, n), (s, s, 3.0), fill=disc(n, s))
            res = synthesize(mri, model, SynthesisOptions(samples=1, steps=1, seed=0))
            grid = res.info["model_grid"]
            assert grid["kind"] == "physical" and grid["pixel_mm"] == 2.0
            assert res.sct.array.shape == mri.array.shape
    finally:
        hook.remove()
    a, b = seen[0], seen[-1]
    # the same crop box in mm (up to the smoothing of its edge at 4 mm) -> canvases of nearly one size
    assert abs(a.shape[-1] - b.shape[-1]) <= 6 and abs(a.shape[-2] - b.shape[-2]) <= 6
    # the disc covers the same number of canvas pixels (within the partial-volume rim)
    area_a, area_b = float((a[0, 0] > 0).sum()), float((b[0, 0] > 0).sum())
    assert abs(area_a - area_b) / area_a < 0.05
    assert abs(area_a - np.pi * 50 ** 2) / (np.pi * 50 ** 2) < 0.08  # radius 100 mm = 50 pixels of 2 mm


def test_checkpoint_without_pixel_size_keeps_the_square_fov_path(tmp_path):
    model = create_model("ddpm", 32, unet=dict(channel_mults=(1, 2), attention_levels=()))
    assert model.pixel_mm is None
    mri = _volume((2, 40, 60), (2.0, 2.0, 3.0))
    res = synthesize(mri, model, SynthesisOptions(samples=1, steps=1))
    assert res.info["model_grid"]["kind"] == "square_fov" and res.info["model_grid"]["shape"] == [32, 32]


def test_pixel_size_is_recorded_and_checked(tmp_path):
    from MRtoCTSynthesisLib.errors import InputError
    from MRtoCTSynthesisLib.models.checkpoint import read_metadata
    from MRtoCTSynthesisLib.models.methods import load_model, save_model

    model = create_model("ddpm", 32, unet=dict(channel_mults=(1, 2), attention_levels=()), pixel_mm=1.75)
    p = save_model(model, tmp_path / "m.safetensors")
    assert read_metadata(p)["conditioning"]["pixel_spacing_mm"] == 1.75
    assert load_model(p).pixel_mm == 1.75
    bad = dict(model.metadata)
    bad["conditioning"] = dict(bad["conditioning"], pixel_spacing_mm=-2)
    with pytest.raises(InputError, match="pixel_spacing_mm"):
        type(model)(model.networks, bad)
    with pytest.raises(InputError, match="physical pixel size"):
        create_model("unet_cnn", 32, pixel_mm=2.0)


def test_foreground_box_finds_the_body_and_ignores_background_noise():
    rng = np.random.default_rng(3)
    canon = -1 + 0.05 * rng.random((5, 100, 120)).astype(np.float32)
    canon[2:4, 30:60, 40:100] = 0.5  # the body, 30 x 60 pixels, on two slices only
    box = foreground_box_mm(canon, (2.0, 1.0), margin_mm=10.0)
    y0, y1, x0, x1 = box
    assert 60 - 10 - 5 <= y0 <= 60 - 10 + 1 and 120 + 10 - 1 <= y1 <= 120 + 10 + 5
    assert 40 - 10 - 5 <= x0 <= 40 - 10 + 1 and 100 + 10 - 1 <= x1 <= 100 + 10 + 5
    assert foreground_box_mm(np.full((2, 10, 10), -1.0, np.float32), (1.0, 1.0)) is None


def test_space_to_depth_unet_shapes_factor_and_zero_init():
    cfg = unet_preset("cpu", in_channels=2)
    assert cfg.space_to_depth == 2 and cfg.downsample_factor == 16
    net = ConditionalUNet(cfg).eval()
    x, c = torch.randn(2, 1, 48, 80), torch.randn(2, 1, 48, 80)
    with torch.no_grad():
        out = net(x, c, torch.tensor([10.0, 500.0]))
    assert out.shape == (2, 1, 48, 80) and torch.count_nonzero(out) == 0  # zero-initialised output
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        out = net(x, c, torch.tensor([10.0, 500.0]))
    # the sub-pixel output varies inside a 2x2 block (not a blocky upsampling)
    assert (out[:, :, 0::2, 0::2] - out[:, :, 1::2, 1::2]).abs().mean() > 1e-4
    with pytest.raises(Exception, match="space_to_depth"):
        UNetConfig(in_channels=2, space_to_depth=3)
    old = UNetConfig.from_dict({k: v for k, v in UNetConfig(in_channels=2).to_dict().items() if k != "space_to_depth"})
    assert old.space_to_depth == 1  # configs of older checkpoints (no such key) keep the full-resolution stem


def test_patch_dataset_draws_body_patches_at_the_pixel_size(tmp_path):
    from MRtoCTSynthesisLib.data.cases import Case, PatchDataset, case_slices
    from MRtoCTSynthesisLib.data.phantom import generate_case

    c = generate_case(3, size=(48, 48, 4), spacing=(8.0, 8.0, 6.0))
    mr, ct = case_slices(Case("c", c.mr_t2, c.ct, c.mask), 32, pixel_mm=4.0)
    assert mr.shape[-2:] == (96, 96)  # 384 mm at 4 mm
    ds = PatchDataset([mr], [ct], ["c"], patch=32)
    m, t = ds.batch(6, torch.Generator().manual_seed(0))
    assert m.shape == (6, 1, 32, 32) and t.shape == (6, 1, 32, 32)
    assert float((t > -0.7).float().mean()) > 0.3  # mostly body
    m2, t2 = ds.fixed_batch(6, seed=0)
    assert torch.equal(m, m2) and torch.equal(t, t2)  # no augmentation: the same draw


def test_training_run_at_a_pixel_size_records_it_and_synthesises(tiny_phantom_cases, tmp_path):
    """`mrtoct train` with model.pixel_mm and data.augment: patches at that pixel size, TorchIO augmentation,
    and a checkpoint whose conditioning records the pixel size, which synthesis then uses."""
    pytest.importorskip("torchio", reason="TorchIO is in the 'train' extra")
    from MRtoCTSynthesisLib.io.volume import read_volume
    from MRtoCTSynthesisLib.models.checkpoint import read_metadata
    from MRtoCTSynthesisLib.models.methods import load_model
    from MRtoCTSynthesisLib.training.config import apply_overrides, default_config
    from MRtoCTSynthesisLib.training.run import TrainingRun

    cfg = default_config("ddpm")
    cfg = apply_overrides(cfg, [f"data.root={tiny_phantom_cases}", "model.image_size=32", "model.pixel_mm=8.0",
                                "model.unet={space_to_depth: 2, channel_mults: [1, 2], attention_levels: []}",
                                "model.prediction=v", "train.steps=2", "train.batch_size=2", "train.val_every=2",
                                "train.checkpoint_every=2", "train.device=cpu", "data.cache=false",
                                "data.augment={bias_field: {p: 1.0}, affine: {p: 1.0}}"])
    out = TrainingRun(cfg, tmp_path / "run").run(progress=False)
    meta = read_metadata(out)
    assert meta["conditioning"]["pixel_spacing_mm"] == 8.0 and meta["conditioning"]["image_size"] == 32
    case = sorted(p for p in tiny_phantom_cases.iterdir() if p.is_dir())[0]
    res = synthesize(read_volume(case / "mr.nii.gz"), load_model(out), SynthesisOptions(samples=1, steps=1))
    assert res.info["model_grid"]["pixel_mm"] == 8.0
    bad = default_config("ddpm")
    from MRtoCTSynthesisLib.errors import InputError
    with pytest.raises(InputError, match="pixel_mm"):
        apply_overrides(bad, ["model.pixel_mm=-1"])


def test_bundled_2mm_model_records_its_pixel_size_and_runs():
    from MRtoCTSynthesisLib.assets import DEFAULT_MODEL, DEMO_CASE
    from MRtoCTSynthesisLib.io.volume import read_volume
    from MRtoCTSynthesisLib.models.methods import load_model

    if not DEFAULT_MODEL.exists():
        pytest.skip(f"{DEFAULT_MODEL.name} is not in this checkout")
    model = load_model(DEFAULT_MODEL)
    assert model.pixel_mm == 2.0 and model.metadata["prediction"] == "v"
    assert model.network.config.space_to_depth == 2 and model.grid_multiple == 16
    mri = read_volume(DEMO_CASE / "mr.nii.gz")
    g = mri.geometry
    two = Volume(np.ascontiguousarray(mri.array[17:19]), make_geometry((g.size[0], g.size[1], 2), g.spacing,
                                                                       g.origin, g.direction))
    res = synthesize(two, model, SynthesisOptions(samples=1, steps=1))
    assert res.info["model_grid"]["pixel_mm"] == 2.0 and res.sct.array.shape == two.array.shape
    assert np.isfinite(res.sct.array).all()
