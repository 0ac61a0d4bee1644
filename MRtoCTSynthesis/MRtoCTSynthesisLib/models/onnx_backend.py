"""ONNX Runtime CPU backend for the diffusion denoiser (``mrtoct synthesize --backend onnx``, issue 23).

The denoiser UNet (:class:`~.networks.unet.ConditionalUNet`) is exported once with ``torch.onnx.export``
(the TorchScript-based exporter, ``dynamo=False``: in torch 2.13 it exports this network with dynamic batch,
height and width, while the ``torch.export``-based exporter needs the extra ``onnxscript`` package) and run
by ONNX Runtime's CPU execution provider. Only the network call changes; the sampler, the noise and the
moment accumulation stay in torch, so the sCT differs from the eager-torch one by the network's float
rounding only (checked at export: largest absolute difference <= :data:`EXPORT_TOLERANCE` on a probe batch,
and by ``Testing/test_onnx_backend.py``).

Cache: the exported graph is written (through :mod:`..io.atomic`: verified, then renamed) to
``$MRTOCT_CACHE/onnx/<key>.onnx`` (default ``~/.cache/mrtoct/onnx``), where ``key`` is the SHA-256 of the
checkpoint's own ``sha256`` (or, for checkpoints without one, of the exported weights), the network's name,
the torch version and :data:`EXPORT_VERSION`; a later run with the same checkpoint loads it without exporting.
A cached file that ONNX Runtime cannot read is exported again.

Measured on the 2-core CPU of the project (benchmarks/onnx_cpu.py, benchmarks/README.md): see there for the
ratio against eager torch, which decides whether this is the CPU default (it is opt-in).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError

#: what ``--backend`` accepts: eager torch (the default) or ONNX Runtime on the CPU
BACKENDS = ("torch", "onnx")
#: bump when the exported graph's inputs/outputs or export settings change (part of the cache key)
EXPORT_VERSION = 1
#: ONNX opset of the export (SDPA and GroupNorm lower to plain ops at 17)
OPSET = 17
#: the largest absolute difference between ONNX Runtime and eager torch accepted when a graph is exported
EXPORT_TOLERANCE = 1e-4
#: the pip requirements of the optional extra (pyproject.toml, extra ``onnx``): the runtime, and the ``onnx``
#: package that torch's exporter needs to write a graph (not needed to run a graph already in the cache)
REQUIREMENT = "'onnxruntime==1.31.1' 'onnx==1.23.2'"


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime can be imported (the optional ``onnx`` extra)."""
    try:
        import onnxruntime  # noqa: F401 - only probing
    except ImportError:
        return False
    return True


def exporter_available() -> bool:
    """Whether torch's ONNX exporter can write a graph here (it needs the ``onnx`` package)."""
    try:
        import onnx  # noqa: F401 - only probing
    except ImportError:
        return False
    return True


def cache_dir() -> Path:
    """``$MRTOCT_CACHE/onnx`` (default ``~/.cache/mrtoct/onnx``)."""
    return Path(os.environ.get("MRTOCT_CACHE", Path.home() / ".cache" / "mrtoct")) / "onnx"


def weights_sha256(net: torch.nn.Module) -> str:
    """SHA-256 over the network's state dict (names, dtypes, shapes and bytes, in sorted name order)."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(net: torch.nn.Module, checkpoint_sha256: str | None, name: str = "denoiser") -> str:
    """The cache file's name (without ``.onnx``) for network ``name`` of a checkpoint."""
    source = checkpoint_sha256 or f"weights:{weights_sha256(net)}"
    text = f"{source}|{name}|torch {torch.__version__}|export {EXPORT_VERSION}|opset {OPSET}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Export(torch.nn.Module):
    """The exported signature: ``(x [B,1,H,W], cond [B,C,H,W], noise_cond [B]) -> [B, out, H, W]``."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, cond: torch.Tensor, noise_cond: torch.Tensor) -> torch.Tensor:
        return self.net(x, cond, noise_cond)


def _probe_inputs(net: torch.nn.Module, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = net.config
    f = max(1, int(cfg.downsample_factor))
    side = max(2 * f, 32 // f * f)
    out_ch = int(getattr(cfg, "out_channels", 1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, out_ch, side, side + f, generator=g)  # not square: W and H are separate axes
    cond = torch.randn(batch, int(cfg.in_channels) - out_ch, side, side + f, generator=g)
    noise = torch.linspace(10.0, 900.0, batch)
    return x, cond, noise


def export_onnx(net: torch.nn.Module) -> bytes:
    """The network exported as ONNX bytes, dynamic in batch, height and width (see the module docstring)."""
    import warnings

    wrapper = _Export(net).eval()
    args = _probe_inputs(net)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes (checked below)
        torch.onnx.export(wrapper, args, buf, input_names=["x", "cond", "noise_cond"], output_names=["out"],
                          dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"},
                                        "cond": {0: "batch", 2: "height", 3: "width"},
                                        "noise_cond": {0: "batch"}, "out": {0: "batch", 2: "height", 3: "width"}},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return buf.getvalue()


def make_session(model_bytes_or_path: Any, threads: int | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (default: torch's thread count)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting worker threads: this CPU is shared (the default spins between calls)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    src = str(model_bytes_or_path) if isinstance(model_bytes_or_path, Path) else model_bytes_or_path
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


class OnnxDenoiser:
    """Calls an ONNX Runtime session like the torch network: ``net(x, cond, noise_cond) -> tensor`` (CPU)."""

    def __init__(self, session, torch_net: torch.nn.Module, path: Path | None = None):
        self.session = session
        self.config = torch_net.config
        self.path = path

    def __call__(self, x: torch.Tensor, cond: torch.Tensor | None = None,
                 noise_cond: torch.Tensor | float | None = None) -> torch.Tensor:
        if x is None or cond is None or noise_cond is None:
            raise InputError("the ONNX denoiser needs x, cond and noise_cond.", "use --backend torch for this model.")
        b = x.shape[0]
        t = torch.as_tensor(noise_cond, dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        feeds = {"x": x.detach().float().contiguous().cpu().numpy(),
                 "cond": cond.detach().float().contiguous().cpu().numpy(),
                 "noise_cond": np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)}
        (out,) = self.session.run(["out"], feeds)
        return torch.from_numpy(out)


def max_abs_difference(net: torch.nn.Module, session, batch: int = 2) -> float:
    """Largest absolute difference of the session's output from eager torch on a probe batch."""
    args = _probe_inputs(net, batch)
    with torch.no_grad():
        ref = net(*args).float()
    got = OnnxDenoiser(session, net)(*args)
    return float((got - ref).abs().max())


def onnx_denoiser(net: torch.nn.Module, checkpoint_sha256: str | None, name: str = "denoiser",
                  threads: int | None = None, folder: Path | None = None) -> OnnxDenoiser:
    """The ONNX Runtime version of ``net`` (a :class:`~.networks.unet.ConditionalUNet`), exported once and then
    loaded from the cache (see the module docstring). Raises :class:`InputError` when ONNX Runtime is missing, the
    network cannot be exported, or the export differs from eager torch by more than :data:`EXPORT_TOLERANCE`."""
    from ..io.atomic import write_bytes_atomic

    if not onnxruntime_available():
        raise InputError("--backend onnx needs ONNX Runtime, which is not installed.",
                         f"pip install {REQUIREMENT} (the engine's 'onnx' extra), or use --backend torch.")
    if getattr(net, "config", None) is None or not hasattr(net.config, "downsample_factor"):
        raise InputError(f"--backend onnx runs UNet denoisers only; network {name!r} is a {type(net).__name__}.",
                         "use --backend torch for this model.")
    net = net.cpu().eval()
    folder = Path(folder) if folder is not None else cache_dir()
    path = folder / f"{cache_key(net, checkpoint_sha256, name)}.onnx"
    session = None
    if path.is_file():
        try:
            session = make_session(path, threads)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is exported again
            session = None
    if session is None:
        if not exporter_available():
            raise InputError("--backend onnx must export this checkpoint once, which needs the 'onnx' package "
                             "(not installed).", f"pip install {REQUIREMENT}, or use --backend torch.")
        try:
            data = export_onnx(net)
        except Exception as exc:  # noqa: BLE001 - any exporter failure is the same user-facing problem
            raise InputError(f"exporting network {name!r} to ONNX failed: {type(exc).__name__}: {str(exc)[:300]}",
                             "use --backend torch (the default).") from exc
        session = make_session(data, threads)
        diff = max_abs_difference(net, session)
        if not diff <= EXPORT_TOLERANCE:
            raise InputError(f"the ONNX export of network {name!r} differs from torch by up to {diff:.2e} "
                             f"(more than {EXPORT_TOLERANCE:g}).", "use --backend torch (the default).")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data, what="ONNX cache file")
        except (OSError, InputError):
            path = None  # an unwritable cache only costs the export next time
    return OnnxDenoiser(session, net, path)
