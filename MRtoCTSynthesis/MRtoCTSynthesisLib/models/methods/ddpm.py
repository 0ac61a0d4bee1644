"""Conditional DDPM (Lyu & Wang Sec. III-A, Table I, Eqs. 23-25; DDMM-Synth Eq. 1).

Variance-preserving process with a discrete linear (or cosine) beta schedule, T = 1000 by default
(DDMM-Synth trains with T = 2000). The paper samples with 1000 ancestral steps (``--sampler ddpm --steps
1000``); the default here is DPM-Solver++(2M) with 5 steps, the smallest count the step sweeps in benchmarks/ put
within 0.3 dB of 1000-step DDPM; with more than one Monte-Carlo sample it takes 20 steps, because 5 steps give
samples with too little spread (:data:`.conditional_diffusion.MC_STEPS`).
"""

from __future__ import annotations

from .conditional_diffusion import ConditionalDiffusion


class ConditionalDDPM(ConditionalDiffusion):
    method = "ddpm"
    default_process = {"kind": "vp", "schedule": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02}
