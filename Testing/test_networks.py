"""Tests of the conditional UNet (MRtoCTSynthesisLib.models.networks)."""

from __future__ import annotations

import json

import pytest
import torch

from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.models.networks import (
    UNET_PRESETS,
    ConditionalUNet,
    UNetConfig,
    count_parameters,
    sinusoidal_embedding,
    unet_preset,
)

torch.set_num_threads(2)


def small_config(**overrides) -> UNetConfig:
    kw = dict(in_channels=2, base_channels=16, channel_mults=(1, 2), attention_levels=(1,),
              norm_groups=4, attention_heads=2, image_size=16)
    kw.update(overrides)
    return UNetConfig(**kw)


def perturbed(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter so zero-initialised layers stop hiding the paths behind them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def inputs(b=3, h=16, w=16, c_x=1, c_cond=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c_x, h, w, generator=g)
    cond = torch.randn(b, c_cond, h, w, generator=g) if c_cond else None
    t = torch.rand(b, generator=g) * 1000.0
    return x, cond, t


@pytest.mark.parametrize(
    "overrides, hw, out_ch",
    [
        (dict(), (16, 16), 1),
        (dict(attention_levels=()), (32, 16), 1),
        (dict(channel_mults=(1, 2, 2), attention_levels=(1, 2), num_res_blocks=2), (16, 24), 1),
        (dict(out_channels=2, time_embedding=False), (16, 16), 2),
        (dict(channel_mults=(1,), attention_levels=(0,)), (10, 6), 1),
    ],
)
def test_output_shape(overrides, hw, out_ch):
    cfg = small_config(**overrides)
    model = perturbed(ConditionalUNet(cfg))
    x, cond, t = inputs(h=hw[0], w=hw[1])
    y = model(x, cond, t)
    assert y.shape == (3, out_ch, *hw)
    assert torch.isfinite(y).all()


def test_presets_shapes_and_sizes():
    tiny = ConditionalUNet(unet_preset("tiny", in_channels=2))
    n = count_parameters(tiny)
    assert 100_000 <= n <= 500_000
    assert n == sum(p.numel() for p in tiny.parameters())
    x, cond, t = inputs(b=2, h=64, w=64)
    assert tiny(x, cond, t).shape == (2, 1, 64, 64)
    # the full preset is only built (not run): it must be a much larger model
    full = ConditionalUNet(unet_preset("full", in_channels=2))
    assert count_parameters(full) > 20_000_000
    assert set(UNET_PRESETS) >= {"tiny", "full"}


def test_count_parameters_trainable_only():
    model = ConditionalUNet(small_config())
    total = count_parameters(model)
    model.conv_in.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - model.conv_in.weight.numel()
    assert count_parameters(model) == total


def test_zero_initialised_output():
    model = ConditionalUNet(small_config())
    x, cond, t = inputs()
    assert torch.count_nonzero(model(x, cond, t)) == 0


def test_non_integer_noise_cond_and_time_embedding_matters():
    model = perturbed(ConditionalUNet(small_config())).eval()
    x, cond, _ = inputs()
    with torch.no_grad():
        y1 = model(x, cond, torch.full((3,), 12.25))
        y2 = model(x, cond, torch.full((3,), 12.75))
        y3 = model(x, cond, torch.full((3,), 900.0))
        y_scalar = model(x, cond, 12.25)
    assert (y1 - y2).abs().max() > 1e-5  # sub-integer changes of the noise level are seen
    assert (y1 - y3).abs().max() > 1e-3
    torch.testing.assert_close(y1, y_scalar)
    # a fractional embedding differs from the embeddings of the neighbouring integers
    e = sinusoidal_embedding(torch.tensor([12.0, 12.5, 13.0]), 16)
    assert e.shape == (3, 16)
    assert not torch.allclose(e[1], e[0]) and not torch.allclose(e[1], e[2])


def test_without_time_embedding_noise_cond_is_ignored():
    model = perturbed(ConditionalUNet(small_config(time_embedding=False))).eval()
    assert model.time_mlp is None
    assert not any("emb_proj" in n for n, _ in model.named_parameters())
    x, cond, _ = inputs()
    with torch.no_grad():
        y_none = model(x, cond, None)
        y_a = model(x, cond, torch.full((3,), 5.0))
        y_b = model(x, cond, torch.full((3,), 700.5))
    assert torch.equal(y_none, y_a) and torch.equal(y_a, y_b)
    assert y_none.abs().max() > 0


def test_time_embedding_requires_noise_cond():
    model = ConditionalUNet(small_config())
    x, cond, _ = inputs()
    with pytest.raises(InputError):
        model(x, cond, None)
    with pytest.raises(InputError, match="noise_cond"):
        model(x, cond, torch.zeros(2))


def test_condition_is_used_and_samples_are_independent():
    model = perturbed(ConditionalUNet(small_config())).eval()
    x, cond, t = inputs(b=4)
    with torch.no_grad():
        y = model(x, cond, t)
        y_other_cond = model(x, cond.flip(-1), t)
        singles = torch.cat([model(x[i:i + 1], cond[i:i + 1], t[i:i + 1]) for i in range(4)])
    assert (y - y_other_cond).abs().max() > 1e-4
    torch.testing.assert_close(y, singles, rtol=1e-4, atol=1e-5)


def test_cond_none_uses_x_only():
    cfg = small_config(in_channels=3, time_embedding=False)
    model = perturbed(ConditionalUNet(cfg)).eval()
    x, cond, _ = inputs(c_x=1, c_cond=2)
    with torch.no_grad():
        both = model(x, cond)
        cat_only = model(torch.cat([cond, x], dim=1), None)  # cond comes first on the channel axis
    torch.testing.assert_close(both, cat_only)


def test_gradients_reach_every_parameter():
    model = perturbed(ConditionalUNet(small_config(channel_mults=(1, 2, 2), attention_levels=(2,)))).train()
    x, cond, t = inputs()
    model(x, cond, t).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient (unused parameter)"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"{name} got a zero gradient"


def test_bad_spatial_size_raises_input_error():
    model = ConditionalUNet(small_config(channel_mults=(1, 2, 2)))  # needs multiples of 4
    x, cond, t = inputs(h=18, w=16)
    with pytest.raises(InputError) as err:
        model(x, cond, t)
    assert "divisible by 4" in str(err.value) and err.value.fix
    assert "20x16" in err.value.fix


def test_wrong_channel_count_raises_input_error():
    model = ConditionalUNet(small_config(in_channels=2))
    x, cond, t = inputs(c_cond=2)
    with pytest.raises(InputError, match="expects 2 input channels"):
        model(x, cond, t)


def test_autocast_bf16_cpu():
    model = perturbed(ConditionalUNet(small_config())).eval()
    x, cond, t = inputs()
    with torch.no_grad():
        ref = model(x, cond, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x, cond, t)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    rel = (y.float() - ref).norm() / ref.norm()
    assert rel < 0.1, rel


def test_channels_last_matches_contiguous():
    model = perturbed(ConditionalUNet(small_config())).eval()
    x, cond, t = inputs()
    with torch.no_grad():
        ref = model(x, cond, t)
        model = model.to(memory_format=torch.channels_last)
        y = model(x.contiguous(memory_format=torch.channels_last),
                  cond.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_config_round_trip_and_validation():
    cfg = small_config(channel_mults=(1, 2, 2), attention_levels=(2,), dropout=0.1)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["channel_mults"] == [1, 2, 2]
    again = UNetConfig.from_dict(d)
    assert again == cfg and isinstance(again.channel_mults, tuple)
    with pytest.raises(InputError, match="unknown UNet config key"):
        UNetConfig.from_dict({**d, "base_channel": 32})
    with pytest.raises(InputError, match="attention_levels"):
        small_config(attention_levels=(2,))  # only levels 0..1 exist
    with pytest.raises(InputError, match="norm_groups"):
        small_config(base_channels=18)
    with pytest.raises(InputError):
        small_config(channel_mults=())
    with pytest.raises(InputError):
        small_config(dropout=1.5)
    with pytest.raises(InputError):
        small_config(in_channels=0)
    # a dict is accepted by the network itself
    assert ConditionalUNet(d).config == cfg


def test_self_attention_matches_explicit_softmax_attention():
    """SelfAttention (q/k/v made contiguous for SDPA's fused kernel) equals attention written out by hand:
    per head softmax(q k^T / sqrt(d)) v over the H*W pixels, then the output projection and the residual."""
    from MRtoCTSynthesisLib.models.networks.unet import SelfAttention

    torch.manual_seed(3)
    att = SelfAttention(32, heads=4, groups=8).eval()
    for p in att.parameters():  # the output projection is not zero here, so the attention path counts
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 32, 6, 5)
    with torch.no_grad():
        got = att(x)
        qkv = att.qkv(att.norm(x)).double().reshape(2, 3, 4, 8, 30)  # [B, qkv, head, d, HW]
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        w = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / 8 ** 0.5, dim=-1)
        out = torch.einsum("bhij,bhdj->bhdi", w, v).reshape(2, 32, 6, 5).float()
        want = x + att.proj(out)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
