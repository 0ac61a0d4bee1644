"""The engine's method and sampler names and labels, torch-free.

The registries (:data:`..models.samplers.SAMPLERS`, :data:`..models.methods.METHODS`) are built from each class's
own ``name`` / ``method`` attribute. The command-line parser (``mrtoct --help`` must not import torch) and the
Slicer module (before torch is installed) need the same names without importing them, so they take them from
here; ``Testing/test_names.py`` checks that every list below equals what the registries hold, so a sampler or
method added to a registry but not here (or the other way round) fails the suite.
"""

from __future__ import annotations

__all__ = ["DIFFUSION_SAMPLERS", "METHOD_SAMPLERS", "SAMPLER_CHOICES", "SAMPLER_LABELS", "DEFAULT_SAMPLER",
           "METHOD_INFO", "METHOD_NAMES", "METHOD_LABELS", "TRAIN_METHODS", "COMPILE_MODES", "METRIC_PRESETS"]

#: the metric definitions of :func:`.pipeline.metrics.evaluate` (``--metrics``); ``synthrad`` = ``synthrad2023``
METRIC_PRESETS = ("default", "synthrad2023", "synthrad2025", "synthrad")

#: the general-purpose samplers of :mod:`.models.samplers` (keys of ``SAMPLERS``, in that order)
DIFFUSION_SAMPLERS = ("ddpm", "ddim", "em", "pc", "ode", "dpmpp")
#: samplers that belong to one method: SynDiff's fixed T/k-step sampler, the one-call CNN/GAN baselines
METHOD_SAMPLERS = ("syndiff", "direct")
#: every value ``--sampler`` accepts
SAMPLER_CHOICES = DIFFUSION_SAMPLERS + METHOD_SAMPLERS
#: the conditional diffusion models' default sampler
DEFAULT_SAMPLER = "dpmpp"

SAMPLER_LABELS = {
    "ddpm": "DDPM ancestral",
    "ddim": "DDIM",
    "em": "Euler-Maruyama (reverse SDE)",
    "pc": "Predictor-corrector",
    "ode": "Probability-flow ODE (RK45)",
    "dpmpp": "DPM-Solver++(2M)",
    "syndiff": "SynDiff large steps (T/k)",
    "direct": "Direct (one network call)",
}

#: per method (keys of ``METHODS``, in that order): label, samplers it runs with, default sampler, and whether
#: ``mrtoct train`` trains it (``ddmm_synth`` samples a trained ``ddpm`` checkpoint)
METHOD_INFO: dict[str, dict] = {
    "ddpm": {"label": "Conditional DDPM (Lyu & Wang 2022)", "samplers": DIFFUSION_SAMPLERS,
             "default_sampler": DEFAULT_SAMPLER, "trainable": True},
    "score_sde": {"label": "Conditional VE-SDE score model (Lyu & Wang 2022)", "samplers": DIFFUSION_SAMPLERS,
                  "default_sampler": DEFAULT_SAMPLER, "trainable": True},
    "ddmm_synth": {"label": "DDMM-Synth: MRI prior + sparse-view CT (Li et al. 2023)",
                   "samplers": ("ddpm", "ddim", "dpmpp"), "default_sampler": "ddim", "trainable": False},
    "syndiff": {"label": "SynDiff: adversarial diffusion (Özbey et al. 2023)", "samplers": ("syndiff",),
                "default_sampler": "syndiff", "trainable": True},
    "unet_cnn": {"label": "U-Net CNN baseline (deterministic)", "samplers": ("direct",), "default_sampler": "direct",
                 "trainable": True},
    "pix2pix": {"label": "pix2pix GAN baseline (deterministic)", "samplers": ("direct",), "default_sampler": "direct",
                "trainable": True},
    "wgan_gp": {"label": "WGAN-GP baseline (deterministic)", "samplers": ("direct",), "default_sampler": "direct",
                "trainable": True},
    "cyclegan": {"label": "CycleGAN baseline (deterministic)", "samplers": ("direct",), "default_sampler": "direct",
                 "trainable": True},
}
METHOD_NAMES = tuple(METHOD_INFO)
METHOD_LABELS = {name: info["label"] for name, info in METHOD_INFO.items()}
#: every value ``mrtoct train --method`` accepts
TRAIN_METHODS = tuple(name for name, info in METHOD_INFO.items() if info["trainable"])

#: ``torch.compile`` modes of ``--compile`` (:data:`.pipeline.synthesis.COMPILE_MODES` is this tuple)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
