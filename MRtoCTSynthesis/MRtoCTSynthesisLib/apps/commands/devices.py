"""``mrtoct devices``: the compute devices torch sees here (each CUDA GPU with its name and memory, Apple's MPS,
the CPU) and which one ``--device auto`` picks. ``--json`` prints one JSON document on one line of stdout; the
Slicer module fills its device list from it, so that Slicer's own process never imports torch."""

from __future__ import annotations

import json
import os
import platform

DEVICES_FORMAT = "mrtoct-devices"


def add_parser(sub) -> None:
    dev = sub.add_parser("devices", help="list the CUDA GPUs, MPS and CPU torch can use (and what --device auto "
                                         "picks)")
    dev.add_argument("--json", action="store_true", help="print one JSON document on one line (for programs: the "
                                                         "Slicer module reads it)")
    dev.set_defaults(func=run)


def list_devices() -> dict:
    """The document of ``mrtoct devices --json``: ``devices`` (id, kind, name, memory_bytes), ``auto``, versions."""
    import torch

    from ...devices import resolve_device

    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"id": f"cuda:{i}", "kind": "cuda", "name": props.name,
                            "memory_bytes": int(props.total_memory),
                            "capability": f"{props.major}.{props.minor}"})
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append({"id": "mps", "kind": "mps", "name": "Apple GPU (MPS)", "memory_bytes": None})
    cpu_name = platform.processor() or platform.machine() or "CPU"
    devices.append({"id": "cpu", "kind": "cpu", "name": f"{cpu_name} ({os.cpu_count() or '?'} logical cores)",
                    "memory_bytes": None})
    auto = resolve_device("auto")
    auto_id = f"cuda:{auto.index or 0}" if auto.type == "cuda" else auto.type
    return {"format": DEVICES_FORMAT, "format_version": 1, "torch": torch.__version__,
            "cuda_build": torch.version.cuda, "devices": devices, "auto": auto_id}


def run(args) -> int:
    info = list_devices()
    if args.json:
        print(json.dumps(info, ensure_ascii=True))
        return 0
    print(f"torch {info['torch']} (CUDA build: {info['cuda_build'] or 'none'}); --device auto -> {info['auto']}")
    for d in info["devices"]:
        memory = f", {d['memory_bytes'] / 2**30:.1f} GiB" if d.get("memory_bytes") else ""
        print(f"  {d['id']:<7} {d['name']}{memory}")
    return 0
