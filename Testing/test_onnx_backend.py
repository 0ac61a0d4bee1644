"""ONNX Runtime backend of the diffusion denoiser (models/onnx_backend.py, `--backend onnx`, issue 23).

The reference is eager torch on the same weights and inputs (the backend must not change what the network
computes beyond float rounding: within 1e-4), on shapes other than the probe the export was traced with
(batch, height and width are dynamic axes). Skipped where onnxruntime / onnx are not installed.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from MRtoCTSynthesisLib.assets import DEFAULT_MODEL, DEMO_CASE, DEMO_MODEL, DEMO_SYNDIFF  # noqa: E402
from MRtoCTSynthesisLib.errors import InputError  # noqa: E402
from MRtoCTSynthesisLib.io.volume import read_volume  # noqa: E402
from MRtoCTSynthesisLib.models import onnx_backend as ob  # noqa: E402
from MRtoCTSynthesisLib.models.methods import load_model  # noqa: E402
from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MRTOCT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def _inputs(net, b, h, w, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, h, w, generator=g)
    cond = torch.randn(b, net.config.in_channels - 1, h, w, generator=g)
    t = torch.rand(b, generator=g) * 999.0
    return x, cond, t


@pytest.mark.parametrize("path,shapes", [(DEMO_MODEL, [(5, 64, 64), (1, 32, 48)]),
                                         (DEFAULT_MODEL, [(3, 48, 80)])])
def test_onnx_denoiser_equals_eager_torch_on_other_shapes(cache, path, shapes):
    model = load_model(path)
    net = model.networks["denoiser"]
    onnx_net = ob.onnx_denoiser(net, model.metadata.get("sha256"))
    for b, h, w in shapes:
        x, cond, t = _inputs(net, b, h, w)
        with torch.no_grad():
            ref = net(x, cond, t)
        got = onnx_net(x, cond, t)
        assert got.shape == ref.shape
        assert float(ref.abs().max()) > 0.05  # a real output, not zeros on both sides
        assert float((got - ref).abs().max()) <= 1e-4
    # a scalar noise level is broadcast like the torch network does
    x, cond, _ = _inputs(net, 2, 32, 32)
    with torch.no_grad():
        ref = net(x, cond, 500.0)
    assert float((onnx_net(x, cond, 500.0) - ref).abs().max()) <= 1e-4


def test_export_is_cached_by_checkpoint_sha256(cache, monkeypatch):
    model = load_model(DEMO_MODEL)
    net = model.networks["denoiser"]
    sha = model.metadata["sha256"]
    first = ob.onnx_denoiser(net, sha)
    assert first.path is not None and first.path.parent == cache and first.path.is_file()
    assert first.path.stem == ob.cache_key(net, sha)
    assert ob.cache_key(net, sha) != ob.cache_key(net, "0" * 64)  # another checkpoint, another file
    assert ob.cache_key(net, None) != ob.cache_key(net, sha)      # no checksum: keyed by the weights instead
    stamp = first.path.stat().st_mtime_ns

    def no_export(_net):
        raise AssertionError("exported again although the cache holds the graph")

    monkeypatch.setattr(ob, "export_onnx", no_export)
    second = ob.onnx_denoiser(net, sha)
    assert second.path == first.path and first.path.stat().st_mtime_ns == stamp
    x, cond, t = _inputs(net, 2, 64, 64)
    assert torch.equal(first(x, cond, t), second(x, cond, t))


def test_a_corrupt_cache_file_is_exported_again(cache):
    model = load_model(DEMO_MODEL)
    net = model.networks["denoiser"]
    sha = model.metadata["sha256"]
    cache.mkdir(parents=True)
    bad = cache / f"{ob.cache_key(net, sha)}.onnx"
    bad.write_bytes(b"not an onnx graph")
    onnx_net = ob.onnx_denoiser(net, sha)
    assert bad.stat().st_size > 100_000
    x, cond, t = _inputs(net, 2, 64, 64)
    with torch.no_grad():
        assert float((onnx_net(x, cond, t) - net(x, cond, t)).abs().max()) <= 1e-4


def _central(vol, n):
    from MRtoCTSynthesisLib.io.volume import Volume, make_geometry

    z0 = (vol.array.shape[0] - n) // 2
    g = vol.geometry
    origin = np.asarray(g.origin) + np.asarray(g.direction).reshape(3, 3) @ np.array([0.0, 0.0, z0 * g.spacing[2]])
    return Volume(np.ascontiguousarray(vol.array[z0:z0 + n]), make_geometry((g.size[0], g.size[1], n), g.spacing,
                                                                            tuple(origin), g.direction))


def test_synthesize_with_onnx_backend_matches_torch(cache):
    mri = _central(read_volume(DEMO_CASE / "mr.nii.gz"), 3)
    model = load_model(DEMO_MODEL)
    opts = SynthesisOptions(samples=2, steps=3, seed=5, device="cpu")
    ref = synthesize(mri, model, opts)
    got = synthesize(mri, model, SynthesisOptions(samples=2, steps=3, seed=5, device="cpu", backend="onnx"))
    assert got.info["backend"] == "onnx" and ref.info["backend"] == "torch"
    # same noise, same sampler: the sCT differs by the network's float rounding only (1e-6 model units ~ 1e-3 HU)
    assert float(np.abs(got.sct.array - ref.sct.array).max()) < 0.05
    assert float(np.abs(got.std.array - ref.std.array).max()) < 0.05
    assert float(ref.std.array.max()) > 1.0  # two different samples, so the comparison covers the noise path
    # the model object goes back to eager torch when asked
    again = synthesize(mri, model, opts)
    assert np.array_equal(again.sct.array, ref.sct.array)


def test_onnx_backend_refusals(cache, monkeypatch):
    mri = _central(read_volume(DEMO_CASE / "mr.nii.gz"), 1)
    with pytest.raises(InputError, match="SynDiff|syndiff|diffusion models"):
        synthesize(mri, load_model(DEMO_SYNDIFF), SynthesisOptions(device="cpu", backend="onnx"))
    with pytest.raises(InputError, match="cannot be combined"):
        SynthesisOptions(backend="onnx", precision="bf16").validate()
    with pytest.raises(InputError, match="unknown backend"):
        SynthesisOptions(backend="tensorrt").validate()
    monkeypatch.setattr(ob, "onnxruntime_available", lambda: False)
    with pytest.raises(InputError, match="onnxruntime==") as err:
        ob.onnx_denoiser(load_model(DEMO_MODEL).networks["denoiser"], None)
    assert "--backend torch" in str(err.value)
