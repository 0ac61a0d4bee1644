"""Diffusion processes (noise schedules): the one place the engine defines alpha(t), sigma(t) and the SDE.

See :mod:`.process` for the conventions (continuous time ``t in [0, 1]``,
``x_t = alpha(t) x0 + sigma(t) eps``, eps-predicting networks for both VP and VE).
"""

from .process import (
    NOISE_CONDITION_SCALE,
    PROCESS_KINDS,
    T_SPACINGS,
    DiffusionProcess,
    VEProcess,
    VPProcess,
    make_process,
    work_dtype,
)

__all__ = [
    "DiffusionProcess",
    "VPProcess",
    "VEProcess",
    "make_process",
    "PROCESS_KINDS",
    "T_SPACINGS",
    "NOISE_CONDITION_SCALE",
    "work_dtype",
]
