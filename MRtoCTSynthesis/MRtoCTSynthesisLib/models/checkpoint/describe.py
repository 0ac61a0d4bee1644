"""``mrtoct info``: a human-readable summary of a checkpoint, from its header only."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from .format import (
    EMA_PREFIX,
    TORCH_SUFFIXES,
    PathLike,
    check_path,
    document_from_header,
    load_checkpoint,
    read_header,
)

__all__ = ["describe_checkpoint"]


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_checkpoint(path: PathLike) -> str:
    """Human-readable summary of a checkpoint (for ``mrtoct info``), from its header only."""
    p = check_path(path)
    size = p.stat().st_size
    if p.suffix.lower() in TORCH_SUFFIXES:
        ck = load_checkpoint(p)
        doc = ck.metadata
        shapes = {g: {k: (str(t.dtype).replace("torch.", ""), list(t.shape)) for k, t in sd.items()}
                  for g, sd in ck.tensors.items()}
    else:
        header = read_header(p)
        doc = document_from_header(header, p)
        shapes = {}
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            parts = key.split(".")
            n = 2 if parts[0] == EMA_PREFIX else 1
            shapes.setdefault(".".join(parts[:n]), {})[".".join(parts[n:])] = (entry["dtype"], entry["shape"])

    lines = [
        f"Checkpoint: {p}",
        f"  size: {size / 2**20:.1f} MiB, format {doc['format']} v{doc['format_version']}, "
        f"engine {doc.get('engine_version', '?')}, created {doc.get('created', '?')}",
        f"  method: {doc['method']}",
        "  networks:",
    ]
    for name, spec in doc["network"].items():
        groups = [g for g in (name, f"{EMA_PREFIX}.{name}") if g in shapes]
        counts = {g: sum(math.prod(s) for _, s in shapes[g].values()) for g in groups}
        dtypes = sorted({d for g in groups for d, _ in shapes[g].values()})
        n = counts.get(name, counts.get(f"{EMA_PREFIX}.{name}", 0))
        ema = "yes (used for inference)" if f"{EMA_PREFIX}.{name}" in shapes else "no"
        stored = "" if groups else " (no weights stored)"
        lines.append(f"    {name}: type {spec.get('type')}, {_fmt_count(n)} parameters, "
                     f"dtype {'/'.join(dtypes) or '-'}, EMA {ema}{stored}")
        lines.append(f"      config: {_short(spec.get('config'))}")
    for key in ("process", "intensity", "conditioning"):
        lines.append(f"  {key}: {_short(doc.get(key))}")
    training = doc.get("training") or {}
    if isinstance(training, Mapping) and training:
        lines.append("  training:")
        for k, v in training.items():
            lines.append(f"    {k}: {_short(v, 200)}")
    extra = [k for k in doc if k not in {"format", "format_version", "method", "network", "process", "intensity",
                                         "conditioning", "training", "created", "engine_version", "sha256",
                                         "sha256_covers"}]
    for k in extra:
        v = doc[k]
        if k == "input_record" and isinstance(v, Mapping) and isinstance(v.get("ranges"), Mapping):
            ranges = ", ".join(f"{n} {lo:.3g}-{hi:.3g}" for n, (lo, hi) in v["ranges"].items())
            level = v.get("mc_std_hu")
            lines.append(f"  input_record (out-of-distribution check): {v.get('cases')} training case(s); {ranges}"
                         + (f"; MC std {level['min']:.0f}-{level['max']:.0f} HU" if isinstance(level, Mapping) else ""))
        elif k == "uncertainty_calibration" and isinstance(v, Mapping) and "scale" in v:
            run = v.get("run") or {}
            lines.append(f"  uncertainty_calibration: std x {float(v['scale']):.3f} (conformal 95 %, fitted on "
                         f"{len(v.get('cases') or [])} held-out case(s) with {run.get('sampler')} {run.get('steps')} "
                         f"steps, K = {run.get('samples')})")
        else:
            lines.append(f"  {k}: {_short(v, 200)}")
    covers = "tensors and metadata" if doc.get("sha256_covers") == "tensors+metadata" else "tensors"
    lines.append("  checksum: "
                 f"{'sha256 ' + doc['sha256'][:16] + '... over the ' + covers if doc.get('sha256') else 'none'}")
    return "\n".join(lines)
