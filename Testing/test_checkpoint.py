"""Tests of the pickle-free checkpoint format (MRtoCTSynthesisLib.models.checkpoint)."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save as st_save

from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.models.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    describe_checkpoint,
    load_checkpoint,
    load_network,
    read_metadata,
    save_checkpoint,
)
from MRtoCTSynthesisLib.models.checkpoint import format as ckpt_format
from MRtoCTSynthesisLib.models.networks import ConditionalUNet, UNetConfig, build_network

torch.set_num_threads(2)

CFG = UNetConfig(in_channels=2, base_channels=16, channel_mults=(1, 2), attention_levels=(1,),
                 norm_groups=4, attention_heads=2, image_size=16)


def _perturbed(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _metadata(**extra):
    md = {
        "method": "ddpm",
        "process": {"type": "ddpm", "schedule": "linear", "timesteps": 1000},
        "intensity": {"ct_window_hu": [-1024, 3071], "mr": "percentile-99.5"},
        "conditioning": {"mr_channels": 1, "context_slices": 0, "image_size": 16},
        "training": {"steps": 10, "seed": 0, "git_commit": "abc123"},
    }
    md.update(extra)
    return md


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, 1, 16, 16, generator=g), torch.tensor([10.5, 700.0])


def _header(data: bytes) -> tuple[int, dict]:
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8:8 + n].decode("utf-8"))


@pytest.fixture()
def saved(tmp_path):
    model = _perturbed(ConditionalUNet(CFG), 0)
    ema = _perturbed(ConditionalUNet(CFG), 1)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, {"denoiser": model}, _metadata(), ema={"denoiser": ema})
    return path, model, ema


def test_round_trip_bit_identical_and_ema_preferred(saved):
    path, model, ema = saved
    x, cond, t = _inputs()
    ck = load_checkpoint(path)
    assert isinstance(ck, Checkpoint)
    assert set(ck.tensors) == {"denoiser", "ema.denoiser"} and ck.has_ema("denoiser")
    with torch.no_grad():
        net_ema = load_network(ck, "denoiser")
        net_raw = load_network(ck, "denoiser", prefer_ema=False)
        assert not net_ema.training
        assert torch.equal(net_ema(x, cond, t), ema(x, cond, t))
        assert torch.equal(net_raw(x, cond, t), model(x, cond, t))
        assert not torch.equal(net_raw(x, cond, t), net_ema(x, cond, t))
    for k, v in model.state_dict().items():
        assert torch.equal(ck.tensors["denoiser"][k], v)


def test_metadata_document(saved):
    path, _, _ = saved
    md = load_checkpoint(path).metadata
    assert md["format"] == FORMAT and md["format_version"] == FORMAT_VERSION == 1
    assert md["method"] == "ddpm"
    assert md["network"]["denoiser"] == {"type": "unet", "config": CFG.to_dict()}  # filled from the module
    assert md["process"]["timesteps"] == 1000
    assert md["conditioning"] == {"mr_channels": 1, "context_slices": 0, "image_size": 16}
    assert md["training"]["git_commit"] == "abc123"
    assert "T" in md["created"] and len(md["sha256"]) == 64
    assert read_metadata(path) == md


def test_file_is_safetensors_layout_without_pickle(saved, monkeypatch):
    path, _, _ = saved
    data = path.read_bytes()
    assert not data.startswith(b"PK") and data[:1] != b"\x80"  # no torch zip, no pickle protocol header
    n, header = _header(data)
    assert data[8:9] == b"{" and 8 + n < len(data)
    assert set(header["__metadata__"]) == {"mrtoct"}
    doc = json.loads(header["__metadata__"]["mrtoct"])
    assert doc["format"] == "mrtoct-checkpoint"
    names = [k for k in header if k != "__metadata__"]
    assert names and all(k.startswith(("denoiser.", "ema.denoiser.")) for k in names)
    # loading must not touch pickle at all
    def no_pickle(*a, **k):
        raise AssertionError("pickle used")
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    load_network(load_checkpoint(path), "denoiser")


@pytest.mark.parametrize("keep", [0.5, 0.999, 4 / 1e9])
def test_truncated_file_refused(saved, keep):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: max(int(len(data) * keep), 4)])
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    assert "truncated or corrupted" in str(err.value)


def test_flipped_header_bytes_refused(saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    n, _ = _header(bytes(data))
    for i in range(8 + n // 2, 8 + n // 2 + 4):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="truncated or corrupted"):
        load_checkpoint(path)
    with pytest.raises(InputError):
        describe_checkpoint(path)


def test_flipped_length_field_refused(saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[6] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="truncated or corrupted"):
        load_checkpoint(path)


def test_flipped_payload_byte_detected_by_checksum(saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum"):
        load_checkpoint(path)
    load_checkpoint(path, verify=False)  # the layout itself is still valid


def _rewrite_document(path, edit):
    """Rewrite the checkpoint with an edited metadata document (the tensors unchanged)."""
    ck = load_checkpoint(path)
    flat = {f"{g}.{k}": t for g, sd in ck.tensors.items() for k, t in sd.items()}
    _, header = _header(path.read_bytes())
    text = edit(header["__metadata__"]["mrtoct"])
    path.write_bytes(st_save(flat, metadata={"mrtoct": text}))


def test_config_weight_mismatch_refused(saved):
    path, _, _ = saved

    def bigger(text):
        doc = json.loads(text)
        doc["network"]["denoiser"]["config"]["base_channels"] = 32
        return json.dumps(doc)

    _rewrite_document(path, bigger)
    with pytest.raises(InputError) as err:  # refused from the header's shapes, before any network is built
        load_checkpoint(path)
    msg = str(err.value)
    assert "do not match" in msg and "shape mismatch" in msg and "conv_in.weight" in msg


def test_config_extra_levels_reports_missing_keys(saved):
    path, _, _ = saved

    def deeper(text):
        doc = json.loads(text)
        doc["network"]["denoiser"]["config"]["channel_mults"] = [1, 2, 2]
        return json.dumps(doc)

    _rewrite_document(path, deeper)
    with pytest.raises(InputError, match=r"missing: (?!none)"):
        load_network(path, "denoiser")


def test_unknown_config_key_and_network_name(saved):
    path, _, _ = saved
    with pytest.raises(InputError, match="no network named 'generator'"):
        load_network(path, "generator")

    def typo(text):
        doc = json.loads(text)
        doc["network"]["denoiser"]["config"]["base_channel"] = 16
        return json.dumps(doc)

    _rewrite_document(path, typo)
    with pytest.raises(InputError, match="unknown UNet config key"):
        load_network(path, "denoiser")


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda t: t[:-3], "not valid JSON"),
        (lambda t: t.replace('"mrtoct-checkpoint"', '"other-format"'), "format"),
        (lambda t: t.replace('"format_version": 1', '"format_version": 2'), "newer"),
        (lambda t: t.replace('"format_version": 1', '"format_version": 0'), "does not read"),
    ],
)
def test_bad_metadata_document_refused(saved, edit, pattern):
    path, _, _ = saved
    _rewrite_document(path, edit)
    with pytest.raises(InputError, match=pattern):
        load_checkpoint(path)


def test_plain_safetensors_without_metadata_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(st_save({"w": torch.zeros(3)}))
    with pytest.raises(InputError, match="not an MRtoCTSynthesis checkpoint"):
        load_checkpoint(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(InputError, match="folder"):
        load_checkpoint(tmp_path)


class Evil:  # a custom class: only a full unpickler could rebuild it
    def __init__(self):
        self.payload = "rm -rf /"


def test_pt_with_custom_class_refused(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": {}, "metadata": {}, "extra": Evil()}, path)
    with pytest.raises(InputError, match="weights_only"):
        load_checkpoint(path)


def test_pt_renamed_to_safetensors_refused(tmp_path):
    path = tmp_path / "legacy.safetensors"
    torch.save({"state_dict": {}, "metadata": {}}, path)
    with pytest.raises(InputError, match="pickle"):
        load_checkpoint(path)


def test_plain_pt_checkpoint_accepted(saved, tmp_path):
    path, model, ema = saved
    ck = load_checkpoint(path)
    pt = tmp_path / "legacy.pth"
    nested = {g: dict(sd) for g, sd in ck.tensors.items()}
    torch.save({"state_dict": nested, "metadata": json.dumps(ck.metadata)}, pt)
    x, cond, t = _inputs()
    with torch.no_grad():
        assert torch.equal(load_network(pt, "denoiser")(x, cond, t), ema(x, cond, t))
    torch.save({"weights": nested}, pt)
    with pytest.raises(InputError, match="state_dict"):
        load_checkpoint(pt)


def test_atomic_save_keeps_old_file_on_failure(saved, monkeypatch):
    path, model, _ = saved
    before = path.read_bytes()

    def half_then_fail(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_format, "_write_payload", half_then_fail)
    other = _perturbed(ConditionalUNet(CFG), 7)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"denoiser": other}, _metadata())
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    load_checkpoint(path)

    monkeypatch.undo()
    save_checkpoint(path, {"denoiser": other}, _metadata())  # a successful save replaces it
    assert path.read_bytes() != before
    assert os.listdir(path.parent) == [path.name]


def test_save_state_dict_requires_spec_and_rejects_bad_names(tmp_path):
    model = ConditionalUNet(CFG)
    p = tmp_path / "c.safetensors"
    with pytest.raises(InputError, match="no description"):
        save_checkpoint(p, {"denoiser": model.state_dict()}, _metadata())
    spec = {"type": "unet", "config": CFG}
    save_checkpoint(p, {"denoiser": model.state_dict()}, _metadata(network={"denoiser": spec}))
    assert load_checkpoint(p).metadata["network"]["denoiser"]["config"] == CFG.to_dict()
    with pytest.raises(InputError, match="invalid network name"):
        save_checkpoint(p, {"ema": model}, _metadata())
    with pytest.raises(InputError, match="method"):
        save_checkpoint(p, {"denoiser": model}, {})
    with pytest.raises(InputError, match="disagrees"):
        other = UNetConfig.from_dict({**CFG.to_dict(), "base_channels": 32})
        save_checkpoint(p, {"denoiser": model}, _metadata(network={"denoiser": {"type": "unet", "config": other}}))
    with pytest.raises(InputError, match=".safetensors"):
        save_checkpoint(tmp_path / "c.pt", {"denoiser": model}, _metadata())


def test_channels_last_and_bf16_state_dicts_round_trip(tmp_path):
    model = _perturbed(ConditionalUNet(CFG), 2).to(memory_format=torch.channels_last)
    p = tmp_path / "cl.safetensors"
    half = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    save_checkpoint(p, {"denoiser": model}, _metadata(), ema={"denoiser": half})
    ck = load_checkpoint(p)
    assert ck.tensors["ema.denoiser"]["conv_in.weight"].dtype == torch.bfloat16
    for k, v in model.state_dict().items():
        assert torch.equal(ck.tensors["denoiser"][k], v)
    net = load_network(ck, "denoiser")  # bf16 EMA weights loaded into a float32 module
    assert net.conv_in.weight.dtype == torch.float32


def test_build_network_registry():
    net = build_network({"type": "unet", "config": CFG.to_dict()})
    assert isinstance(net, ConditionalUNet) and net.config == CFG
    with pytest.raises(InputError, match="unknown network type"):
        build_network({"type": "transformer", "config": {}})
    with pytest.raises(InputError):
        build_network({"config": {}})


def test_describe_checkpoint(saved):
    path, model, _ = saved
    text = describe_checkpoint(path)
    assert "method: ddpm" in text
    assert "denoiser: type unet" in text and "EMA yes" in text
    n = sum(p.numel() for p in model.parameters())
    assert f"{n / 1e6:.2f} M" in text or f"{n / 1e3:.1f} k" in text
    assert "git_commit" in text and "sha256" in text


def test_same_module_as_network_and_ema(tmp_path):
    """An EMA copy that shares memory with the network (e.g. EMA not started yet) is still saved."""
    model = _perturbed(ConditionalUNet(CFG), 4)
    p = tmp_path / "same.safetensors"
    save_checkpoint(p, {"denoiser": model}, _metadata(), ema={"denoiser": model})
    ck = load_checkpoint(p)
    for k, v in model.state_dict().items():
        assert torch.equal(ck.tensors["ema.denoiser"][k], v) and torch.equal(ck.tensors["denoiser"][k], v)
