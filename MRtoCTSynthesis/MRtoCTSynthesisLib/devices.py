"""Torch devices and mixed precision: one place for what ``--device`` and ``--precision`` mean.

Used alike by synthesis, training and evaluation, so ``auto``, ``cuda`` and ``cuda:N`` resolve the same way
everywhere: ``auto`` is CUDA when torch sees a GPU, else the CPU; a bare ``cuda`` (or ``auto``) in a
multi-process run is the process's own GPU (``local_rank``); anything torch cannot parse, or a GPU torch
cannot see, is an :class:`~.errors.InputError` naming the valid values.
"""

from __future__ import annotations

import torch

from .errors import InputError

DEVICE_HELP = "auto (CUDA if available), cpu, cuda, cuda:N or mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str | None = "auto", local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` for a ``--device`` value (see the module docstring)."""
    text = "auto" if name in (None, "") else str(name).strip().lower()
    if text == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda" if local_rank is None else f"cuda:{int(local_rank)}")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}.", f"use {DEVICE_HELP}.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name} was asked for, but torch sees no CUDA GPU.",
                             "use --device cpu (or auto), or install a CUDA build of torch on a machine with a GPU.")
        if dev.index is None and local_rank is not None:
            dev = torch.device(f"cuda:{int(local_rank)}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: torch sees only {torch.cuda.device_count()} CUDA GPU(s).",
                             f"use cuda:0 ... cuda:{torch.cuda.device_count() - 1}, or auto.")
    elif dev.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise InputError(f"--device {name} was asked for, but this torch has no usable MPS (Apple GPU) backend.",
                             "use --device cpu (or auto).")
    elif dev.type != "cpu":
        raise InputError(f"device type {dev.type!r} is not supported.", f"use {DEVICE_HELP}.")
    return dev


def effective_precision(device: torch.device, precision: str = "auto") -> str:
    """What ``precision`` means on ``device``: ``"bf16"``, ``"fp16"`` or ``"fp32"`` (the rules of :func:`autocast`).

    CUDA: bf16 (or fp16 where bf16 is missing) for ``auto``/``bf16``, fp16 for ``fp16``. CPU: bf16 only when
    ``bf16`` is asked for explicitly (convolutions and matrix products in bf16, everything else in fp32; about 2x
    faster per network call on CPUs with native bf16 such as AVX512-BF16 or AMX, and slower on CPUs without,
    benchmarks/README.md); ``auto``, ``fp32`` and ``fp16`` run in full precision there. Other devices: fp32."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}.", f"use one of {', '.join(PRECISIONS)}.")
    if device.type == "cpu":
        return "bf16" if precision == "bf16" else "fp32"
    if device.type != "cuda" or precision == "fp32":
        return "fp32"
    if precision == "fp16" or not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context for ``precision`` on ``device`` (see :func:`effective_precision`)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(effective_precision(device, precision))
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)
