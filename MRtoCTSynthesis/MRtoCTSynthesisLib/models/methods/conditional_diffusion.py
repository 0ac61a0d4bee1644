"""Shared machinery of the two conditional diffusion methods (``ddpm`` and ``score_sde``).

The network sees the noisy CT concatenated with the MR condition channels (DDMM-Synth Eq. 1, SR3-style)
and a continuous noise condition (1000 t, :meth:`DiffusionProcess.noise_condition`), and predicts the
noise eps. For the VP/DDPM process this is Lyu & Wang Eq. 23 / DDMM-Synth Eq. 1; for the VE-SDE the
score is s = -eps / sigma(t), so the same eps-MSE is Lyu & Wang Eq. 28 with lambda(t) = sigma(t)^2.
Every sampler of :mod:`..samplers` works with both processes; the method only picks the defaults.

Parameterisation (``metadata["prediction"]``): ``"eps"`` (default, the papers' choice) or ``"v"``
(v = alpha eps - sigma x0, Salimans & Ho 2022). Both are the same diffusion model with a reweighted loss:
the eps-MSE weights the x0 error by SNR = alpha^2/sigma^2, so at high noise a network can drive the loss
near zero by predicting eps ~ x_t while learning little of the MR->CT mapping; the v-MSE weights the x0
error by 1/sigma^2 (about 1 at high noise). Measured on the demo phantoms with the tiny UNet after 3000
CPU steps, the eps model's DDIM samples stayed 0.29 model units (~590 HU) from the CT, so the bundled
demo model uses "v". Samplers always receive eps: a v network is converted in :meth:`predict_eps`.
"""

from __future__ import annotations

import torch

from ...checks import per_sample
from ...errors import InputError
from ..diffusion import make_process
from ..samplers import SAMPLER_ALIASES, SAMPLERS, make_sampler
from .base import SampleOutput, SynthesisModel

# steps used when the caller gives none: the papers' settings for the slow samplers, and the
# DPM-Solver++ / DDIM step counts that benchmarks/ found to match them on the demo models.
#: dpmpp 5: the smallest step count within 0.3 dB of 1000-step DDPM in both step sweeps of benchmarks/README.md
#: (-0.14 dB at 8 samples, -0.30 dB at 2); 5-50 steps all lie within 0.46 dB of it
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 100, "em": 1000, "pc": 500, "ode": 1000, "dpmpp": 5}
#: the default steps when more than one Monte-Carlo sample is drawn (``--samples > 1``), where the std must have the
#: posterior's spread, not only the mean the right value. Measured against the closed-form Gaussian posterior
#: (benchmarks/sampler_variance.py, table in benchmarks/README.md, VP linear schedule): DPM-Solver++ at 5 steps gives
#: samples whose variance is 35-62 % too small for posterior spreads of 0.034-0.2 model units (70-410 HU); at 20 steps
#: it is within 2.3 % of the exact posterior there (and at the schedule's floor, -8 % at 0.034, which no step count
#: goes below). ddpm/ddim/em/pc/ode keep their defaults (the papers' settings; ddpm 1000 is within 7 % from 0.1).
MC_STEPS = {"dpmpp": 20}
PREDICTIONS = ("eps", "v")


def v_target(process, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = alpha_t eps - sigma_t x0."""
    return per_sample(process.alpha(t), x0) * eps - per_sample(process.sigma(t), x0) * x0


def eps_from_v(process, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Invert v for eps given x_t = alpha x0 + sigma eps: eps = (alpha v + sigma x_t) / (alpha^2 + sigma^2)."""
    a, s = per_sample(process.alpha(t), x_t), per_sample(process.sigma(t), x_t)
    return (a * v + s * x_t) / (a * a + s * s)


class ConditionalDiffusion(SynthesisModel):
    default_sampler = "dpmpp"
    valid_samplers = tuple(SAMPLERS)

    def __init__(self, networks, metadata):
        super().__init__(networks, metadata)
        if "denoiser" not in networks:
            raise InputError("this checkpoint has no 'denoiser' network.",
                             "use a checkpoint written by `mrtoct train`.")
        self.network = networks["denoiser"]
        self.process = make_process(metadata["process"])
        self.prediction = metadata.get("prediction", "eps")
        if self.prediction not in PREDICTIONS:
            raise InputError(f"unknown prediction type {self.prediction!r} in the checkpoint.",
                             f"use a checkpoint whose 'prediction' is one of {PREDICTIONS}.")

    def make_sampler(self, name=None, steps=None, **options):
        name = name or self.default_sampler
        if name not in self.valid_samplers:
            raise InputError(f"sampler {name!r} does not work with method {self.method!r}.",
                             f"choose one of: {', '.join(self.valid_samplers)}.")
        return make_sampler(name, self.process, steps or DEFAULT_STEPS.get(name, 50), **options)

    def steps_for(self, name=None, steps=None, samples=1):
        """``steps`` if given; for ``samples > 1`` the under-dispersion-free default of :data:`MC_STEPS`."""
        if steps is not None or samples <= 1:
            return steps
        name = name or self.default_sampler
        return MC_STEPS.get(SAMPLER_ALIASES.get(str(name).strip().lower(), str(name).strip().lower()))

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.network(x_t, cond, self.process.noise_condition(t)).float()
        return out if self.prediction == "eps" else eps_from_v(self.process, x_t.float(), out, t)

    # -------------------------------------------------------------------------------- training
    #: what :mod:`..training` needs: the network(s) with an EMA copy, the optimiser groups, Adam defaults
    #: (lr 1e-4, betas (0.9, 0.999), eps 1e-8: Lyu & Wang Sec. IV; DDMM-Synth Sec. 3 uses lr 1e-4 too)
    inference_networks = ("denoiser",)
    unpaired = False
    method_config = {"lr": 1e-4, "betas": [0.9, 0.999]}

    def optimizer_groups(self) -> dict[str, list[str]]:
        return {"denoiser": ["denoiser"]}

    def train_step(self, state, data, generator: torch.Generator) -> dict[str, float]:
        """One Adam step on :func:`diffusion_loss` (the network may be wrapped in DistributedDataParallel)."""
        mr, ct = data.batch(state.batch_size, generator)
        net = state.wrapped.get("denoiser", self.network)
        loss = diffusion_loss(net, self.process, mr.to(state.device), ct.to(state.device), generator=generator,
                              prediction=self.prediction)
        state.update("denoiser", loss)
        return {"loss": loss.item()}

    def sample(self, cond, sampler, generator=None, x0_hook=None, cancel=None) -> SampleOutput:
        shape = (cond.shape[0], 1, cond.shape[2], cond.shape[3])
        res = sampler.sample(lambda x, t: self.predict_eps(x, t, cond), shape, generator=generator,
                             x0_hook=x0_hook, cancel=cancel, device=cond.device)
        return SampleOutput(res.x0, res.nfe)


def diffusion_loss(network: torch.nn.Module, process, mr: torch.Tensor, ct: torch.Tensor,
                   generator: torch.Generator | None = None, prediction: str = "eps") -> torch.Tensor:
    """The denoising loss E ||target - net(alpha_t x0 + sigma_t eps, y, t)||^2 with target eps (Lyu & Wang
    Eq. 23; for the VE-SDE Eq. 28 with lambda(t) = sigma(t)^2) or, for ``prediction="v"``, v_t."""
    # draw on the generator's device (a CPU generator also drives CUDA training), then move
    gdev = generator.device if generator is not None else ct.device
    t = process.sample_training_t(ct.shape[0], generator=generator, device=gdev).to(ct.device)
    eps = torch.randn(ct.shape, generator=generator, device=gdev, dtype=ct.dtype).to(ct.device)
    x_t = process.q_sample(ct, t, eps)
    pred = network(x_t, mr, process.noise_condition(t))
    target = eps if prediction == "eps" else v_target(process, ct, eps, t)
    return torch.mean((pred.float() - target) ** 2)
