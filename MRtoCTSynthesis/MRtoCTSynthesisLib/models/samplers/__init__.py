"""Reverse-diffusion samplers: one small object per method, a shared loop, pure step functions.

``SAMPLERS`` maps the names used by the CLI / Slicer module to the classes; :func:`make_sampler`
builds one with validated options. All samplers share the ``model_fn`` / ``x0_hook`` /
:class:`SampleResult` conventions described in :mod:`.base`.

==========  ===================================  =============================  ================
name        method                               paper                          NFE
==========  ===================================  =============================  ================
``ddpm``    ancestral posterior sampling         Lyu & Wang Table I, Eqs. 24-25 ``steps``
``ddim``    DDIM (``eta``)                        DDMM-Synth (100 steps)         ``steps``
``em``      Euler-Maruyama reverse SDE           Lyu & Wang Eq. 30, Alg. 2      ``steps``
``pc``      predictor + Langevin corrector       Lyu & Wang Eq. 31, Alg. 3      ``steps (1+M)``
``ode``     probability-flow ODE, adaptive RK45  Lyu & Wang Eqs. 32-33, Alg. 4  adaptive
``dpmpp``   DPM-Solver++(2M)                     (fast default)                 ``steps``
==========  ===================================  =============================  ================
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import InputError
from ...names import DEFAULT_SAMPLER
from ..diffusion.process import DiffusionProcess, make_process
from .base import Prediction, Sampler, SampleResult, SamplingRun
from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .dpm_solver import DPMSolverPPSampler
from .euler_maruyama import EulerMaruyamaSampler
from .ode import ProbabilityFlowODESampler
from .predictor_corrector import PredictorCorrectorSampler

__all__ = [
    "SAMPLERS",
    "SAMPLER_ALIASES",
    "DEFAULT_SAMPLER",
    "make_sampler",
    "sampler_options",
    "Sampler",
    "SampleResult",
    "Prediction",
    "SamplingRun",
    "DDPMSampler",
    "DDIMSampler",
    "EulerMaruyamaSampler",
    "PredictorCorrectorSampler",
    "ProbabilityFlowODESampler",
    "DPMSolverPPSampler",
]

#: name -> class, keyed by each class's own ``name`` (``names.DIFFUSION_SAMPLERS`` is tested to equal the keys)
SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (
    DDPMSampler, DDIMSampler, EulerMaruyamaSampler, PredictorCorrectorSampler, ProbabilityFlowODESampler,
    DPMSolverPPSampler)}

#: alternative spellings accepted by :func:`make_sampler`
SAMPLER_ALIASES = {
    "euler_maruyama": "em",
    "euler-maruyama": "em",
    "predictor_corrector": "pc",
    "predictor-corrector": "pc",
    "probability_flow": "ode",
    "rk45": "ode",
    "dpm++": "dpmpp",
    "dpmpp_2m": "dpmpp",
    "dpm-solver++": "dpmpp",
}



def sampler_options(name: str) -> list[str]:
    """Keyword options accepted by sampler ``name`` (besides ``process`` and ``steps``)."""
    return SAMPLERS[_canonical(name)].option_names()


def _canonical(name: Any) -> str:
    if not isinstance(name, str):
        raise InputError(f"sampler name must be a string, got {name!r}", f"use one of {sorted(SAMPLERS)}")
    key = name.strip().lower()
    key = SAMPLER_ALIASES.get(key, key)
    if key not in SAMPLERS:
        raise InputError(f"unknown sampler {name!r}", f"use one of {sorted(SAMPLERS)}")
    return key


def make_sampler(name: str, process: DiffusionProcess | Mapping[str, Any], steps: int, **opts: Any) -> Sampler:
    """Build sampler ``name`` for ``process`` (a process or its config dict) with ``steps`` steps.

    ``opts`` are the sampler's keyword options (``clip_x0``, ``clip_range``, ``t_spacing`` for all;
    ``eta`` for ddim; ``snr``, ``corrector_steps``, ``predictor`` for pc; ``rtol``, ``atol``,
    ``t_end``, ``check_every`` for ode; ``order`` for dpmpp). Raises :class:`InputError` for an
    unknown name, an unknown option or an invalid value (e.g. ``steps <= 0``).
    """
    key = _canonical(name)
    if not isinstance(process, DiffusionProcess):
        process = make_process(process)
    allowed = sampler_options(key)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise InputError(f"unknown option(s) {unknown} for sampler {key!r}", f"use only {allowed}")
    return SAMPLERS[key](process, steps, **opts)
