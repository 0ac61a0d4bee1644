"""Self-describing, pickle-free checkpoints.

File layout
-----------
A checkpoint is one ``*.safetensors`` file: an 8-byte little-endian header length, a JSON header (tensor
names, dtypes, shapes, byte offsets, and a ``__metadata__`` str->str dict), then the raw tensor bytes.
Loading it never runs ``pickle``. ``__metadata__`` holds one key, ``mrtoct``, whose value is a JSON
document::

    {
      "format": "mrtoct-checkpoint",          # fixed
      "format_version": 1,                    # bumped on incompatible changes
      "method": "ddpm",                       # ddpm | score_sde | syndiff | unet_cnn | pix2pix | wgan_gp | cyclegan ...
      "network": {                            # every network stored in the file, by name
        "denoiser": {"type": "unet", "config": {...UNetConfig.to_dict()...}}
      },
      "process": {...} | null,                # noise schedule / SDE config (null for CNN/GAN methods)
      "intensity": {...},                     # how CT HU and MR intensities map to network values
      "conditioning": {"mr_channels": 1, "context_slices": 0, "image_size": 64,
                       "pixel_spacing_mm": 2.0},  # optional, see below
      "training": {...},                      # free: data description, steps, seed, git commit ...
      "created": "2025-01-01T12:00:00+00:00", # ISO 8601, UTC
      "engine_version": "0.1.0",
      "sha256_covers": "tensors+metadata",   # what sha256 covers (absent in older files: tensors only)
      "sha256": "..."                         # optional, see below
    }

``conditioning.pixel_spacing_mm`` (optional, a float in mm; written by ``create_model(pixel_mm=...)``, i.e.
``model.pixel_mm`` of a training config) is the in-plane pixel size the model was trained at. When present,
inference resamples every slice in plane to exactly that pixel size (a canvas over the body's bounding box,
:mod:`...io.slicing`'s physical grid) and back, and ``image_size`` is only the training patch size; when absent
(older checkpoints), each slice's square field of view is resized to ``image_size`` as before. Networks of
type ``unet`` may carry ``space_to_depth`` (1, 2 or 4; absent = 1) in their config.

Tensor names are ``<network>.<state_dict key>`` (for example ``denoiser.conv_in.weight``). Exponential
moving-average weights of a network are stored as ``ema.<network>.<key>``; **when EMA weights are
present, inference uses them** (:func:`load_network` with ``prefer_ema=True``, the default). Network
names are identifiers without dots and cannot be ``ema``.

``sha256`` (written by default) is the SHA-256 over the tensors in sorted name order, each contributing
``name \\0 dtype \\0 shape-as-JSON \\0 raw little-endian bytes``, followed (``"sha256_covers":
"tensors+metadata"``, which this engine writes) by ``\\0metadata\\0`` and the metadata document
without ``sha256`` as canonical JSON (sorted keys, no spaces, ASCII). It is independent of the byte layout
safetensors chooses, and :func:`load_checkpoint` checks it when present, so a flipped bit in the weights or an
edited metadata entry is reported instead of silently producing a wrong CT. Files without ``sha256_covers`` (written
by earlier versions) have a checksum over the tensors only.

Loading checks, in this order and before allocating anything large: the file is a regular file (not a FIFO or a
device); the safetensors header is well formed and describes exactly the file's size; the metadata JSON is not
nested deeper than :data:`MAX_JSON_DEPTH`; every network config is within bounds and its state-dict shapes
(computed on torch's ``meta`` device, :func:`..networks.expected_state_shapes`) equal the tensor shapes in the
header; the file fits in free memory. Only then are the tensors read and the checksum verified.

Saving is atomic and verified (:func:`...io.atomic.write_bytes_atomic`): the bytes go to a temporary file in the
destination folder, are fsync-ed, read back and compared by SHA-256, and ``os.replace`` puts them in place, so an
interrupted save or a full disk never leaves a half-written checkpoint.

Legacy ``.pt``/``.pth`` files are read only through ``torch.load(..., weights_only=True)`` and must
hold ``{"state_dict": {...}, "metadata": {...}}`` in the same layout; anything else is refused.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from ... import __version__
from ...errors import InputError
from ...io.atomic import write_bytes_atomic
from ...io.memory import check_fits_in_memory
from ..networks import NETWORK_TYPES, expected_state_shapes, network_spec, normalise_spec, unwrap_module

__all__ = ["FORMAT", "FORMAT_VERSION", "METADATA_KEY", "EMA_PREFIX", "STATE_PREFIX", "Checkpoint", "save_checkpoint",
           "load_checkpoint", "read_metadata", "read_header", "document_from_header", "checkpoint_where", "check_path",
           "check_network_shapes", "json_depth", "MAX_JSON_DEPTH", "CHECKSUM_COVERS"]

FORMAT = "mrtoct-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "mrtoct"
EMA_PREFIX = "ema"
TORCH_SUFFIXES = (".pt", ".pth")

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
#: metadata JSON nested deeper than this is refused (a legitimate document is a few levels deep; a deep one would
#: make the JSON parser, or code walking the document, hit Python's recursion limit)
MAX_JSON_DEPTH = 64
#: the ``sha256_covers`` value of files whose checksum includes the metadata document
CHECKSUM_COVERS = "tensors+metadata"
_CORRUPT_FIX = "the checkpoint is truncated or corrupted; re-download or re-copy it"

StateDict = Mapping[str, torch.Tensor]
PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Checkpoint:
    """A loaded checkpoint: the metadata document and the tensors grouped by network.

    ``tensors`` maps a group name (``"denoiser"``, ``"ema.denoiser"``) to that network's state dict.
    """

    metadata: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]]
    path: str | None = None

    @property
    def method(self) -> str:
        return self.metadata["method"]

    @property
    def network_names(self) -> list[str]:
        """Names of the networks described in the metadata."""
        return list(self.metadata.get("network", {}))

    def has_ema(self, name: str) -> bool:
        return f"{EMA_PREFIX}.{name}" in self.tensors

    def state_dict(self, name: str, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
        """Weights of network ``name``: the EMA copy when present and ``prefer_ema``, else the raw ones."""
        if prefer_ema and self.has_ema(name):
            return self.tensors[f"{EMA_PREFIX}.{name}"]
        if name in self.tensors:
            return self.tensors[name]
        if self.has_ema(name):
            return self.tensors[f"{EMA_PREFIX}.{name}"]
        raise InputError(
            f"checkpoint {self.path or ''} holds no weights for network {name!r} "
            f"(weights present for: {', '.join(sorted(self.tensors)) or 'nothing'})",
            "use a checkpoint written for this method, or re-export it",
        )


# ---------------------------------------------------------------------------------------------- helpers
def checkpoint_where(path: PathLike | None) -> str:
    return f"checkpoint {str(path)!r}" if path is not None else "checkpoint"


def _corrupt(path: PathLike | None, detail: str) -> InputError:
    return InputError(f"{checkpoint_where(path)} cannot be read: {detail}", _CORRUPT_FIX)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (Path, torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() <= 1024:
        return obj.tolist()
    if type(obj).__module__ == "numpy":  # numpy scalars and small arrays, without importing numpy here
        return obj.tolist() if hasattr(obj, "tolist") else obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serialisable")


#: tensor-name prefix of the training state (optimiser moments ...) in resumable checkpoints
STATE_PREFIX = "train_state"


def _check_network_name(name: Any) -> None:
    if not isinstance(name, str) or not name or "." in name or name == EMA_PREFIX:
        raise InputError(
            f"invalid network name {name!r} for a checkpoint",
            "use a non-empty name without dots that is not 'ema' (e.g. 'denoiser', 'generator')",
        )


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def _payload_sha256(flat: Mapping[str, torch.Tensor], doc: Mapping[str, Any] | None = None) -> str:
    """The checksum of the tensors, and of the metadata document ``doc`` (without its ``sha256``) when given."""
    h = hashlib.sha256()
    for name in sorted(flat):
        t = flat[name]
        h.update(name.encode("utf-8") + b"\0")
        h.update(str(t.dtype).replace("torch.", "").encode() + b"\0")
        h.update(json.dumps(list(t.shape)).encode() + b"\0")
        h.update(_tensor_bytes(t))
    if doc is not None:
        h.update(b"\0metadata\0")
        h.update(_canonical_json({k: v for k, v in doc.items() if k != "sha256"}))
    return h.hexdigest()


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def json_depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: safe on any depth)."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in node)
    return depth


def _loads_bounded(text: Any, path: PathLike | None, what: str) -> Any:
    """``json.loads`` that turns deep nesting (RecursionError) and bad JSON into an :class:`InputError`."""
    try:
        obj = json.loads(text)
    except RecursionError:
        obj = None
        deep = True
    else:
        deep = json_depth(obj) > MAX_JSON_DEPTH
    if deep:
        raise InputError(f"{checkpoint_where(path)} cannot be read: its {what} is nested more than {MAX_JSON_DEPTH} "
                         "levels deep (a checkpoint's is a few levels deep)",
                         _CORRUPT_FIX + " (or re-export it if it was edited by hand)")
    return obj


def _group(flat: Mapping[str, torch.Tensor], path: PathLike | None) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        parts = key.split(".")
        n = 2 if parts[0] == EMA_PREFIX else 1
        if len(parts) <= n or not all(parts[:n]):
            raise _corrupt(path, f"tensor name {key!r} does not start with a network name")
        groups.setdefault(".".join(parts[:n]), {})[".".join(parts[n:])] = t
    return groups


def _flatten_networks(
    networks: Mapping[str, nn.Module | StateDict], seen_storages: set[int], prefix: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Prefixed CPU tensors ready for safetensors, plus the specs of registered module types.

    ``seen_storages`` (shared between calls) makes tensors sharing memory (tied weights, or an EMA copy
    that is the network itself) into private copies, which safetensors requires.
    """
    flat: dict[str, torch.Tensor] = {}
    specs: dict[str, dict[str, Any]] = {}
    for name, net in networks.items():
        _check_network_name(name)
        if isinstance(net, nn.Module):
            spec = network_spec(net)
            if spec is not None:
                specs[name] = spec
            sd = unwrap_module(net).state_dict()
        elif isinstance(net, Mapping):
            sd = net
        else:
            raise InputError(
                f"network {name!r} to save is a {type(net).__name__}, not a module or a state dict",
                "pass an nn.Module or its state_dict()",
            )
        for key, t in sd.items():
            if not isinstance(t, torch.Tensor):
                raise InputError(
                    f"state dict entry {name}.{key} is a {type(t).__name__}, not a tensor",
                    "checkpoints store tensors only; put other values into the metadata",
                )
            t = t.detach().to("cpu")
            if not t.is_contiguous():
                t = t.contiguous()
            if t.numel():
                ptr = t.untyped_storage().data_ptr()
                if ptr in seen_storages:  # safetensors refuses shared memory: give it a private copy
                    t = t.clone()
                else:
                    seen_storages.add(ptr)
            flat[f"{prefix}{name}.{key}"] = t
    return flat, specs


def _read_exact(path: Path, n: int | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read() if n is None else f.read(n)
    except OSError as e:
        raise InputError(f"{checkpoint_where(path)} cannot be opened: {e.strerror or e}",
                         "check the path and the file permissions") from e


def check_path(path: PathLike) -> Path:
    """An existing regular checkpoint file (FIFOs and devices such as /dev/zero are refused: reading them hangs or
    never ends)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"checkpoint file not found: {str(p)!r}",
                         "check the path, or download / train a model first (mrtoct train)")
    if p.is_dir():
        raise InputError(f"{str(p)!r} is a folder, not a checkpoint file",
                         "give the path of the .safetensors file inside it")
    mode = p.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
        raise InputError(f"{str(p)!r} is {kind}, not a checkpoint file",
                         "give the path of a .safetensors checkpoint file")
    return p


def _parse_header(prefix: bytes, file_size: int, path: PathLike | None) -> dict[str, Any]:
    """Validate the safetensors layout from the first bytes of the file; return the header dict."""
    if file_size < 8:
        raise _corrupt(path, f"the file has only {file_size} bytes")
    looks_torch = prefix[:4] == b"PK\x03\x04" or (prefix[:1] == b"\x80" and b"\x02" <= prefix[1:2] <= b"\x05")
    if looks_torch and prefix[8:9] != b"{":  # a safetensors header always starts with '{' at byte 8
        raise InputError(
            f"{checkpoint_where(path)} is a PyTorch pickle/zip file, not a safetensors file",
            "if it is a trusted legacy checkpoint, give it a .pt extension; otherwise re-export it "
            "with save_checkpoint (never load untrusted pickles)",
        )
    n = int.from_bytes(prefix[:8], "little")
    if n < 2 or n > _MAX_HEADER_BYTES or 8 + n > file_size:
        raise _corrupt(path, f"its header length field says {n} bytes but the file has {file_size} bytes "
                             "(not a safetensors file, or cut short)")
    raw = prefix[8:8 + n]
    if len(raw) < n:
        raise _corrupt(path, "the header is cut short")
    try:
        header = _loads_bounded(raw.decode("utf-8"), path, "safetensors header")
    except (UnicodeDecodeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise _corrupt(path, f"its safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise _corrupt(path, "its safetensors header is not a JSON object")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            start, stop = entry["data_offsets"]
            numel = math.prod(int(s) for s in entry["shape"])
            if not (0 <= int(start) <= int(stop)) or not isinstance(entry["dtype"], str) or numel < 0:
                raise ValueError
        except (KeyError, TypeError, ValueError) as e:
            raise _corrupt(path, f"the header entry for tensor {key!r} is malformed") from e
        end = max(end, int(stop))
    if 8 + n + end != file_size:
        raise _corrupt(path, f"the header describes {8 + n + end} bytes but the file has {file_size}")
    return header


def document_from_header(header: Mapping[str, Any], path: PathLike | None) -> dict[str, Any]:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        raise InputError(
            f"{checkpoint_where(path)} is a safetensors file but not an MRtoCTSynthesis checkpoint "
            f"(no {METADATA_KEY!r} entry in its metadata)",
            "use a checkpoint written by MRtoCTSynthesis (mrtoct train / save_checkpoint)",
        )
    return _parse_document(meta[METADATA_KEY], path)


def _parse_document(text: Any, path: PathLike | None) -> dict[str, Any]:
    if isinstance(text, Mapping):
        doc = dict(text)
    else:
        try:
            doc = _loads_bounded(text, path, "metadata")
        except InputError:
            raise
        except (TypeError, ValueError) as e:
            raise InputError(
                f"the metadata of {checkpoint_where(path)} is not valid JSON ({e})",
                _CORRUPT_FIX + " (or re-export it if it was edited by hand)",
            ) from e
    _validate_document(doc, path)
    return doc


def _validate_document(doc: Any, path: PathLike | None) -> None:
    if not isinstance(doc, dict):
        raise InputError(f"the metadata of {checkpoint_where(path)} is not a JSON object", _CORRUPT_FIX)
    fmt = doc.get("format")
    if fmt != FORMAT:
        raise InputError(
            f"{checkpoint_where(path)} has format {fmt!r}, expected {FORMAT!r}",
            "use a checkpoint written by MRtoCTSynthesis (mrtoct train / save_checkpoint)",
        )
    ver = doc.get("format_version")
    if isinstance(ver, bool) or not isinstance(ver, int):
        raise InputError(f"{checkpoint_where(path)} has no valid format_version (got {ver!r})", _CORRUPT_FIX)
    if ver > FORMAT_VERSION:
        raise InputError(
            f"{checkpoint_where(path)} uses checkpoint format version {ver}, newer than this engine's {FORMAT_VERSION}",
            "update MRtoCTSynthesis to a release that reads it",
        )
    if ver != FORMAT_VERSION:
        raise InputError(
            f"{checkpoint_where(path)} uses checkpoint format version {ver}, which this engine does not read "
            f"(it reads version {FORMAT_VERSION})",
            "re-export the checkpoint with this version of MRtoCTSynthesis",
        )
    if not isinstance(doc.get("method"), str) or not doc["method"]:
        raise InputError(f"{checkpoint_where(path)} does not name its method", "re-export the checkpoint")
    nets = doc.get("network")
    if not isinstance(nets, dict):
        raise InputError(f"{checkpoint_where(path)} does not describe its networks", "re-export the checkpoint")
    for name, spec in nets.items():
        normalise_spec(name, spec)


def check_network_shapes(doc: Mapping[str, Any], shapes: Mapping[str, tuple], path: PathLike | None) -> None:
    """Every network the metadata describes must have exactly the state-dict keys and shapes of the tensors stored
    for it (raw and EMA copies), checked on torch's meta device before any real network is built; a config that
    asks for an absurd network (e.g. num_res_blocks 1e6) is refused by the configs' bounds first."""
    for name, spec in (doc.get("network") or {}).items():
        groups = {g: {k[len(g) + 1:]: s for k, s in shapes.items() if k.startswith(g + ".")}
                  for g in (name, f"{EMA_PREFIX}.{name}")}
        groups = {g: sd for g, sd in groups.items() if sd}
        if not groups:
            continue  # described only (a network saved elsewhere)
        try:
            expected = expected_state_shapes(spec)
        except InputError as e:
            raise InputError(f"{checkpoint_where(path)}, network {name!r}: {e.problem}", e.fix) from None
        for group, stored in groups.items():
            report = _shape_report(expected, stored)
            if report:
                raise InputError(
                    f"{checkpoint_where(path)}: the network config of {name!r} in its metadata and the tensors "
                    f"stored for {group!r} do not match ({report})",
                    "the file's metadata and weights disagree (edited or mixed-up file); use an unmodified checkpoint")


def _shape_report(expected: Mapping[str, tuple], stored: Mapping[str, tuple]) -> str | None:
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    shapes = [f"{k} {tuple(stored[k])} vs {tuple(expected[k])}" for k in sorted(set(expected) & set(stored))
              if tuple(stored[k]) != tuple(expected[k])]
    if not (missing or unexpected or shapes):
        return None

    def fmt(items: list[str]) -> str:
        return "none" if not items else ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    return f"missing: {fmt(missing)}; unexpected: {fmt(unexpected)}; shape mismatch (stored vs config): {fmt(shapes)}"


# ---------------------------------------------------------------------------------------------- save
def _write_payload(f, data: bytes) -> None:
    """Write ``data`` to the open temporary file (a separate function so tests can make it fail)."""
    view = memoryview(data)
    chunk = 64 * 1024 * 1024
    for i in range(0, len(view), chunk):
        f.write(view[i:i + chunk])


def _atomic_write(path: Path, data: bytes) -> None:
    """The one atomic, verified writer (``_write_payload`` stays the hook tests replace to simulate failures)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data, writer=lambda f, d: _write_payload(f, d), what=f"checkpoint {path}")


def save_checkpoint(
    path: PathLike,
    networks: Mapping[str, nn.Module | StateDict],
    metadata: Mapping[str, Any],
    *,
    ema: Mapping[str, nn.Module | StateDict] | None = None,
    extra: Mapping[str, torch.Tensor] | None = None,
    checksum: bool = True,
) -> Path:
    """Write networks (and optional EMA copies) with their metadata to ``path`` atomically.

    ``networks`` maps names (``"denoiser"``, ``"generator"`` ...) to modules or state dicts; ``ema``
    maps the same names to EMA copies (stored as ``ema.<name>.*``). ``metadata`` must give ``method``
    and may give ``network`` (specs ``{"type", "config"}``; filled in automatically for modules of a
    registered type), ``process``, ``intensity``, ``conditioning``, ``training``, ``created`` and any
    further JSON-able keys. ``format``, ``format_version``, ``engine_version`` and ``sha256`` are set
    here. ``extra`` tensors (a training run's optimiser moments, see :mod:`.training`) are stored as
    ``train_state.<key>`` and come back as ``Checkpoint.tensors["train_state"]``. Returns the path written.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"checkpoints are written as .safetensors files, got {str(path)!r}",
                         "give the output file a .safetensors extension")
    if not isinstance(metadata, Mapping):
        raise InputError("checkpoint metadata must be a dict", "pass a dict with at least 'method'")
    if not networks:
        raise InputError("no networks to save", "pass at least one network")

    seen: set[int] = set()
    flat, specs = _flatten_networks(networks, seen)
    if ema:
        for name in ema:
            if name not in networks:
                raise InputError(f"EMA weights given for {name!r}, which is not among the saved networks",
                                 "save the network itself too")
        ema_flat, _ = _flatten_networks(ema, seen, prefix=f"{EMA_PREFIX}.")
        flat.update(ema_flat)
    if extra:
        if STATE_PREFIX in networks:
            raise InputError(f"{STATE_PREFIX!r} is reserved for training state", "rename the network")
        for key, t in extra.items():
            flat[f"{STATE_PREFIX}.{key}"] = t.detach().to("cpu").contiguous().clone()

    given_specs = metadata.get("network") or {}
    if not isinstance(given_specs, Mapping):
        raise InputError("metadata['network'] must be a dict of network specs",
                         "use {'denoiser': {'type': 'unet', 'config': {...}}}")
    net_specs: dict[str, dict[str, Any]] = {}
    for name in networks:
        if name in given_specs:
            spec = normalise_spec(name, given_specs[name])
            auto = specs.get(name)
            if auto is not None and spec["type"] == auto["type"]:
                cfg_cls = NETWORK_TYPES[spec["type"]][0]
                if cfg_cls.from_dict(spec["config"]).to_dict() != auto["config"]:
                    raise InputError(
                        f"metadata['network'][{name!r}] disagrees with the config of the module being saved",
                        "leave the network spec out (it is filled from the module) or pass module.config",
                    )
            net_specs[name] = spec
        elif name in specs:
            net_specs[name] = specs[name]
        else:
            raise InputError(
                f"no description (type and config) for network {name!r}",
                "add metadata['network'][name] = {'type': 'unet', 'config': config.to_dict()}, "
                "or pass the module itself",
            )
    for name, spec in given_specs.items():  # descriptions of networks saved elsewhere are kept as given
        net_specs.setdefault(name, normalise_spec(name, spec))

    method = metadata.get("method")
    if not isinstance(method, str) or not method:
        raise InputError("checkpoint metadata has no 'method'", "add e.g. metadata['method'] = 'ddpm'")

    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": method,
        "network": net_specs,
        "process": metadata.get("process"),
        "intensity": metadata.get("intensity", {}),
        "conditioning": metadata.get("conditioning", {}),
        "training": metadata.get("training", {}),
        "created": metadata.get("created")
        or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "engine_version": __version__,
    }
    for key, value in metadata.items():
        if key not in doc and key not in ("format", "format_version", "sha256", "sha256_covers", "engine_version"):
            doc[key] = value
    try:
        doc = json.loads(json.dumps(doc, default=_json_default))  # plain JSON values, as a reader will see them
    except (TypeError, ValueError) as e:
        raise InputError(f"checkpoint metadata cannot be written as JSON: {e}",
                         "keep metadata values to numbers, strings, lists and dicts") from e
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise InputError(f"checkpoint metadata is nested more than {MAX_JSON_DEPTH} levels deep",
                         "keep the metadata a few levels deep")
    if checksum:
        doc["sha256_covers"] = CHECKSUM_COVERS
        doc["sha256"] = _payload_sha256(flat, doc)
    text = json.dumps(doc)
    _validate_document(json.loads(text), path)

    data = safetensors_save(flat, metadata={METADATA_KEY: text})
    _atomic_write(path, data)
    return path


# ---------------------------------------------------------------------------------------------- load
def read_metadata(path: PathLike) -> dict[str, Any]:
    """The metadata document of a checkpoint, reading only the header (fast; tensors not verified)."""
    p = check_path(path)
    if p.suffix.lower() in TORCH_SUFFIXES:
        return load_checkpoint(p).metadata
    return document_from_header(read_header(p), p)


def read_header(p: Path) -> dict[str, Any]:
    size = p.stat().st_size
    first = _read_exact(p, 8)
    n = int.from_bytes(first[:8], "little") if len(first) == 8 else 0
    prefix = _read_exact(p, 8 + n) if 8 <= 8 + n <= min(size, 8 + _MAX_HEADER_BYTES) else first
    return _parse_header(prefix, size, p)


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu", *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint without pickle; problems are reported as :class:`InputError`.

    ``verify`` checks the stored SHA-256 of the tensors when the file has one.
    """
    p = check_path(path)
    if p.suffix.lower() in TORCH_SUFFIXES:
        check_fits_in_memory(3 * p.stat().st_size, f"loading {checkpoint_where(p)}",
                             "close other programs or use a machine with more memory")
        doc, flat = _load_torch_file(p)
        check_network_shapes(doc, {k: tuple(t.shape) for k, t in flat.items()}, p)
    else:
        header = read_header(p)  # the header alone: nothing large is read before the checks below
        doc = document_from_header(header, p)
        check_network_shapes(doc, {k: tuple(int(d) for d in e["shape"]) for k, e in header.items()
                                   if k != "__metadata__"}, p)
        size = p.stat().st_size
        check_fits_in_memory(2 * size, f"loading {checkpoint_where(p)}",
                             "close other programs or use a machine with more memory")
        data = _read_exact(p)
        if len(data) != size:
            raise _corrupt(p, f"the file changed while it was read ({size} then {len(data)} bytes)")
        try:
            flat = safetensors_load(data)
        except Exception as e:  # SafetensorError and friends: the header lied about the payload
            raise _corrupt(p, f"safetensors could not read the tensors ({e})") from e
        del data
    if verify and doc.get("sha256"):
        covers = doc.get("sha256_covers")
        if covers not in (None, CHECKSUM_COVERS):
            raise InputError(f"{checkpoint_where(p)} has a checksum over {covers!r}, which this engine does not know",
                             "update MRtoCTSynthesis to a release that reads it")
        if _payload_sha256(flat, doc if covers == CHECKSUM_COVERS else None) != doc["sha256"]:
            what = "the tensors or the metadata do not" if covers else "the tensors do not"
            raise _corrupt(p, f"{what} match the checksum stored in the file (damaged, or edited after saving)")
    groups = _group(flat, p)
    if str(map_location) != "cpu":
        groups = {g: {k: t.to(map_location) for k, t in sd.items()} for g, sd in groups.items()}
    return Checkpoint(metadata=doc, tensors=groups, path=str(p))


def _torch_load_refusal(path: Path, exc: Exception) -> InputError:
    """A clear InputError from torch.load(weights_only=True)'s long, advice-laden error message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    never = ("MRtoCTSynthesis never unpickles arbitrary objects (that could run code); use a .safetensors checkpoint, "
             "or re-export the model with save_checkpoint from code you trust")
    glob = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if glob:
        return InputError(f"{checkpoint_where(path)} was refused: it holds a pickled Python object ({glob.group(1)}) "
                          f"besides "
                          "tensors; loading it could run code, so torch.load(weights_only=True) did not unpickle it",
                          never)
    if re.search(r"zip archive|central directory|PytorchStreamReader|unexpected EOF|Ran out of input", text, re.I):
        return _corrupt(path, "its PyTorch zip archive is incomplete or damaged")
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if detail:
        return InputError(f"{checkpoint_where(path)} was refused: it is not a plain-tensor PyTorch file "
                          f"(torch.load(weights_only=True): {detail.group(1).strip().rstrip('.')}): either it holds "
                          f"Python "
                          "objects that could run code when unpickled, or it is truncated or corrupted", never)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return InputError(f"{checkpoint_where(path)} was refused: it is not a readable PyTorch file, or it is truncated or "
                      f"corrupted (torch.load(weights_only=True): {first})", never)


def _load_torch_file(p: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols before refusing them
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _torch_load_refusal(p, e) from e
    if not isinstance(obj, Mapping) or "state_dict" not in obj or "metadata" not in obj:
        raise InputError(
            f"{checkpoint_where(p)} is a PyTorch file without the expected {{'state_dict', 'metadata'}} layout",
            "re-export the model as .safetensors with save_checkpoint",
        )
    doc = _parse_document(obj["metadata"], p)
    sd = obj["state_dict"]
    if not isinstance(sd, Mapping):
        raise InputError(f"{checkpoint_where(p)}: 'state_dict' is not a dict",
                         "re-export the model with save_checkpoint")
    flat: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if isinstance(value, torch.Tensor):
            flat[str(key)] = value
        elif isinstance(value, Mapping):  # nested {network: {key: tensor}}
            for k, t in value.items():
                if not isinstance(t, torch.Tensor):
                    raise InputError(f"{checkpoint_where(p)}: entry {key}.{k} is not a tensor", "re-export the model")
                flat[f"{key}.{k}"] = t
        else:
            raise InputError(f"{checkpoint_where(p)}: entry {key!r} is not a tensor", "re-export the model")
    return doc, flat
