"""Shared machinery of the two conditional diffusion methods (``ddpm`` and ``score_sde``).

The network sees the noisy CT concatenated with the MR condition channels (DDMM-Synth Eq. 1, SR3-style)
and a continuous noise condition (1000 t, :meth:`DiffusionProcess.noise_condition`), and predicts the
noise eps. For the VP/DDPM process this is Lyu & Wang Eq. 23 / DDMM-Synth Eq. 1; for the VE-SDE the
score is s = -eps / sigma(t), so the same eps-MSE is Lyu & Wang Eq. 28 with lambda(t) = sigma(t)^2.
Every sampler of :mod:`..samplers` works with both processes; the method only picks the defaults.
"""

from __future__ import annotations

import torch

from ..diffusion import make_process
from ..errors import InputError
from ..samplers import SAMPLERS, make_sampler
from .base import SampleOutput, SynthesisModel

# steps used when the caller gives none: the papers' settings for the slow samplers, and the
# DPM-Solver++ / DDIM step counts that benchmarks/ found to match them on the demo models.
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 100, "em": 1000, "pc": 500, "ode": 1000, "dpmpp": 20}


class ConditionalDiffusion(SynthesisModel):
    default_sampler = "dpmpp"
    valid_samplers = tuple(SAMPLERS)

    def __init__(self, networks, metadata):
        super().__init__(networks, metadata)
        if "denoiser" not in networks:
            raise InputError("this checkpoint has no 'denoiser' network.", "use a checkpoint written by `mrtoct train`.")
        self.network = networks["denoiser"]
        self.process = make_process(metadata["process"])

    def make_sampler(self, name=None, steps=None, **options):
        name = name or self.default_sampler
        if name not in self.valid_samplers:
            raise InputError(f"sampler {name!r} does not work with method {self.method!r}.",
                             f"choose one of: {', '.join(self.valid_samplers)}.")
        return make_sampler(name, self.process, steps or DEFAULT_STEPS.get(name, 50), **options)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.network(x_t, cond, self.process.noise_condition(t)).float()

    def sample(self, cond, sampler, generator=None, x0_hook=None, cancel=None) -> SampleOutput:
        shape = (cond.shape[0], 1, cond.shape[2], cond.shape[3])
        res = sampler.sample(lambda x, t: self.predict_eps(x, t, cond), shape, generator=generator,
                             x0_hook=x0_hook, cancel=cancel, device=cond.device)
        return SampleOutput(res.x0, res.nfe)


def diffusion_loss(network: torch.nn.Module, process, mr: torch.Tensor, ct: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The eps-prediction loss: E ||eps - eps_theta(alpha_t x0 + sigma_t eps, y, t)||^2 (Lyu & Wang Eq. 23;
    for the VE-SDE it is Eq. 28 with lambda(t) = sigma(t)^2)."""
    t = process.sample_training_t(ct.shape[0], generator=generator, device=ct.device)
    eps = torch.randn(ct.shape, generator=generator, device=ct.device, dtype=ct.dtype)
    x_t = process.q_sample(ct, t, eps)
    pred = network(x_t, mr, process.noise_condition(t))
    return torch.mean((pred.float() - eps) ** 2)
