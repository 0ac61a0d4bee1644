"""SynDiff: adversarial diffusion with large steps, trained without paired data (Özbey et al., IEEE TMI 2023).

Fast diffusion (SynDiff Sec. III-B.1)
-------------------------------------
The forward process moves in ``N = T / k`` large steps (T = 1000, k = 250, so N = 4, Sec. IV-B). With
paper time ``t = i k`` (step index i = 1..N), step i adds noise of variance (SynDiff Eq. 10, the exponential
schedule obtained by integrating a linear beta(s) = beta_min + s (beta_max - beta_min) over (t - k, t] / T)::

    gamma_i = 1 - exp(-beta_min k / T - (beta_max - beta_min) (2 t k - k^2) / (2 T^2)),   t = i k

with beta_min = 0.1, beta_max = 20, so ``x_t = sqrt(1 - gamma_t) x_{t-k} + sqrt(gamma_t) eps`` (SynDiff
Eqs. 8-9). With ``alpha_i = 1 - gamma_i`` and ``alpha_bar_i = prod_{j<=i} alpha_j`` (``alpha_bar_0 = 1``) the
posterior of a large step is Gaussian (SynDiff Eqs. 13-14)::

    q(x_{t-k} | x_t, x0) = N( sqrt(abar_{i-1}) gamma_i / (1 - abar_i) x0
                              + sqrt(alpha_i) (1 - abar_{i-1}) / (1 - abar_i) x_t,
                              (1 - abar_{i-1}) / (1 - abar_i) gamma_i I )

:class:`FastDiffusionSchedule` implements these; its variance is exactly 0 at i = 1, so the last step
returns the generator's x0.

Adversarial projector (Eqs. 11-12, 15)
--------------------------------------
The diffusive generator G_theta(x_t, y, t, z) (:class:`~..networks.gan.DiffusiveGenerator`: time embedding,
random latent z through adaptive normalisation) predicts x0; a sample of the reverse step is drawn from
``q(x_{t-k} | x_t, x0 = G_theta(...))`` (SynDiff Eq. 15). The time-conditioned discriminator
D_theta(x_{t-k}, x_t, t) (:class:`~..networks.gan.TimeConditionedDiscriminator`) tells true from generated
x_{t-k}; both use the non-saturating loss, D with the R1 penalty eta/2 ||grad D(x_real)||^2, eta = 0.5.

Unpaired, cycle-consistent training (Eqs. 16-24): :func:`syndiff_train_step`
-----------------------------------------------------------------------------
Modality A = MR, B = CT, drawn independently (no pairs). Non-diffusive ResNet generators give source
estimates ``y_ct = nd_gen_ct(x0_mr)`` and ``y_mr = nd_gen_mr(x0_ct)`` (Eq. 16, losses Eqs. 17-18 with
discriminators ``nd_disc_*``); the diffusive generators denoise each real image guided by the *estimated*
other modality, ``diff_gen_mr(x_t^MR, y_ct)`` and ``diff_gen_ct(x_t^CT, y_mr)`` (Eqs. 19-20, discriminators
``diff_disc_*``); the cycle loss compares the real images with the non-diffusive reconstructions
``nd_gen_mr(y_ct)``, ``nd_gen_ct(y_mr)`` (Eq. 21) and with the diffusive x0 predictions (Eq. 22, L1,
lambda_1 = 0.5 for both modules). Generator loss Eq. 23 and discriminator loss Eq. 24 with lambda_2 = 1.
One call makes one Adam step of the four discriminators, then one of the four generators (lr 1e-4, SynDiff
Sec. IV-B; betas (0.5, 0.9), which the paper does not state, from the adversarial-diffusion literature).

Supervised variant (``paired: true``): :func:`syndiff_paired_train_step`
-------------------------------------------------------------------------
SynDiff Sec. V-C notes that with paired, registered data SynDiff can be trained supervised: the real
source image conditions the diffusive generator and a pixel-wise loss replaces the cycle-consistency loss.
With ``options: {paired: true}`` only ``diff_gen_ct`` and ``diff_disc_ct`` exist; one step draws registered
(MR, CT) pairs, diffuses the CT as in Eqs. 8-9, predicts ``x0 = diff_gen_ct(x_t, MR, t, z)``, updates the
discriminator on Eq. 12 (with R1) and the generator on ``lambda_2`` Eq. 11 ``+ lambda_1 ||CT - x0||_1``
(``lambda_1`` = ``lambda_cycle``, the weight the cycle loss had). Inference is identical. It needs a
quarter of the unpaired step's network calls and learns the MR-to-CT map directly, which is what the
bundled demo model uses on a CPU budget.

Inference and checkpoint
------------------------
Only ``diff_gen_ct`` (MR -> CT) is used: start from x_T ~ N(0, I), and for i = N..1 call it once with a fresh
latent z and draw x_{t-k} from the posterior: exactly N = T/k = 4 network calls per sample; K Monte-Carlo
samples (fresh z and noise) give the mean and std. The checkpoint holds ``diff_gen_ct`` (inference; its EMA
copy is stored as well and used) plus, for resuming training, ``diff_gen_mr``, ``diff_disc_ct``,
``diff_disc_mr``, ``nd_gen_ct``, ``nd_gen_mr``, ``nd_disc_ct`` and ``nd_disc_mr`` (optimiser moments are not
stored). ``process`` holds the schedule ``{"kind": "syndiff", "T", "k", "beta_min", "beta_max"}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...checks import per_sample
from ...errors import CancelledError, InputError
from ..losses import batch_on_device, ns_discriminator_loss, ns_generator_loss, r1_penalty, set_requires_grad
from ..networks.gan import DiffusiveGenerator, ResnetGenerator, TimeConditionedDiscriminator, gan_preset
from .base import SampleOutput
from .unet_cnn import TrainableMethod

DEFAULT_PROCESS = {"kind": "syndiff", "T": 1000, "k": 250, "beta_min": 0.1, "beta_max": 20.0}


class FastDiffusionSchedule:
    """SynDiff's N = T/k-step forward process and its posterior (SynDiff Eqs. 8-10, 13-14).

    Index ``i`` (0..N) is the step number: paper time ``t = i k``; ``i = 0`` is the clean image.
    Arrays (float64, CPU) are indexed by ``i``: ``gamma[i]``, ``alpha[i]``, ``alpha_bar[i]`` (``[0] = 1``).
    Methods take ``i`` as an int or a ``[B]`` integer tensor and broadcast over the image axes.
    """

    def __init__(self, T: int = 1000, k: int = 250, beta_min: float = 0.1, beta_max: float = 20.0):
        for name, v in (("T", T), ("k", k)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"SynDiff {name} must be a positive integer, got {v!r}", "use T = 1000, k = 250")
        if T % k:
            raise InputError(f"SynDiff step size k = {k} does not divide T = {T}",
                             "use e.g. T = 1000, k = 250 (4 steps)")
        if not (0 < float(beta_min) < float(beta_max)):
            raise InputError(f"SynDiff needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}",
                             "use beta_min = 0.1, beta_max = 20")
        self.T, self.k, self.beta_min, self.beta_max = T, k, float(beta_min), float(beta_max)
        self.n_steps = T // k
        t = torch.arange(1, self.n_steps + 1, dtype=torch.float64) * k
        expo = self.beta_min * k / T + (self.beta_max - self.beta_min) * (2 * t * k - k * k) / (2 * T * T)
        gamma = -torch.expm1(-expo)  # 1 - exp(-expo), accurate for small expo (SynDiff Eq. 10)
        zero = torch.zeros(1, dtype=torch.float64)
        self.gamma = torch.cat([zero, gamma])
        self.alpha = 1.0 - self.gamma
        self.alpha_bar = torch.cumprod(self.alpha, 0)

    # ------------------------------------------------------------------ config
    @classmethod
    def from_config(cls, cfg: dict) -> "FastDiffusionSchedule":
        cfg = dict(cfg)
        kind = cfg.pop("kind", "syndiff")
        if kind != "syndiff":
            raise InputError(f"a SynDiff model needs a 'syndiff' process, got {kind!r}", "use a SynDiff checkpoint")
        unknown = sorted(set(cfg) - {"T", "k", "beta_min", "beta_max"})
        if unknown:
            raise InputError(f"unknown SynDiff process key(s) {unknown}", "use T, k, beta_min, beta_max")
        return cls(**cfg)

    def to_dict(self) -> dict:
        return {"kind": "syndiff", "T": self.T, "k": self.k, "beta_min": self.beta_min, "beta_max": self.beta_max}

    # ------------------------------------------------------------------ helpers
    def time_condition(self, i) -> torch.Tensor:
        """Network time input for step ``i``: the paper time ``t = i k`` (250, 500, ... for T = 1000)."""
        return torch.as_tensor(i, dtype=torch.float32) * float(self.k)

    def _c(self, arr: torch.Tensor, i, like: torch.Tensor) -> torch.Tensor:
        if isinstance(i, torch.Tensor):
            v = arr[i.to("cpu", torch.long).reshape(-1)]
        else:
            v = arr[int(i)].reshape(1)
        return per_sample(v, like)

    # ------------------------------------------------------------------ forward process
    def q_step(self, x_prev: torch.Tensor, i, noise: torch.Tensor) -> torch.Tensor:
        """One large forward step ``x_{t-k} -> x_t`` (SynDiff Eq. 8):
        ``sqrt(1 - gamma_i) x_{t-k} + sqrt(gamma_i) eps``."""
        return self._c(self.alpha.sqrt(), i, x_prev) * x_prev + self._c(self.gamma.sqrt(), i, x_prev) * noise

    def q_sample(self, x0: torch.Tensor, i, noise: torch.Tensor) -> torch.Tensor:
        """``x_t ~ q(x_t | x0)`` (Eqs. 8-9 composed): ``sqrt(abar_i) x0 + sqrt(1 - abar_i) eps`` (``i = 0``: x0)."""
        return self._c(self.alpha_bar.sqrt(), i, x0) * x0 + self._c((1 - self.alpha_bar).sqrt(), i, x0) * noise

    def sample_training_pair(self, x0: torch.Tensor, gen: torch.Generator):
        """``(i, x_{t-k}, x_t, t)`` for training: a step ``i ~ U{1..N}`` per image, ``x_{t-k} ~ q(x_{t-k} | x0)``
        and ``x_t ~ q(x_t | x_{t-k})`` (Eqs. 8-9), and the network time input ``t``; draws from ``gen`` on the
        CPU (step, then the two noises), so runs are reproducible on any device."""
        dev = x0.device
        i = torch.randint(1, self.n_steps + 1, (x0.shape[0],), generator=gen)
        x_prev = self.q_sample(x0, i - 1, torch.randn(x0.shape, generator=gen).to(dev))
        x_t = self.q_step(x_prev, i, torch.randn(x0.shape, generator=gen).to(dev))
        return i, x_prev, x_t, self.time_condition(i).to(dev)

    # ------------------------------------------------------------------ posterior
    def posterior_coefficients(self, i):
        """``(c0, ct, var)`` of ``q(x_{t-k} | x_t, x0) = N(c0 x0 + ct x_t, var)`` for step ``i >= 1`` (Eq. 14)."""
        ab, ab_prev = self.alpha_bar[1:], self.alpha_bar[:-1]
        g, a = self.gamma[1:], self.alpha[1:]
        c0 = torch.cat([torch.zeros(1, dtype=torch.float64), ab_prev.sqrt() * g / (1 - ab)])
        ct = torch.cat([torch.zeros(1, dtype=torch.float64), a.sqrt() * (1 - ab_prev) / (1 - ab)])
        var = torch.cat([torch.zeros(1, dtype=torch.float64), (1 - ab_prev) / (1 - ab) * g])
        if isinstance(i, torch.Tensor):
            idx = i.to("cpu", torch.long)
            return c0[idx], ct[idx], var[idx]
        return c0[int(i)], ct[int(i)], var[int(i)]

    def posterior(self, x_t: torch.Tensor, x0: torch.Tensor, i) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Mean and variance (broadcastable) of ``q(x_{t-k} | x_t, x0)`` (SynDiff Eq. 14).

        For an int ``i`` (sampling) the coefficients are Python scalars, so no host-to-device copy happens.
        """
        c0, ct, var = self.posterior_coefficients(i)
        if not isinstance(i, torch.Tensor):
            return float(c0) * x0 + float(ct) * x_t, float(var)
        return per_sample(c0, x_t) * x0 + per_sample(ct, x_t) * x_t, per_sample(var, x_t)

    def posterior_sample(self, x_t: torch.Tensor, x0: torch.Tensor, i, noise: torch.Tensor) -> torch.Tensor:
        """A draw of ``x_{t-k}`` from ``q(x_{t-k} | x_t, x0)``; with ``x0 = G_theta(...)`` this is SynDiff Eq. 15."""
        mean, var = self.posterior(x_t, x0, i)
        return mean + (math.sqrt(var) if isinstance(var, float) else var.sqrt()) * noise


@dataclass(frozen=True)
class SynDiffSampler:
    """SynDiff's own fixed sampler: N = T/k generator calls along the posterior (no step choice)."""

    steps: int
    name: str = "syndiff"

    def to_config(self) -> dict:
        """The whole configuration (it has no options), like :meth:`..samplers.Sampler.to_config`."""
        return {"name": self.name, "steps": self.steps}


class SynDiff(TrainableMethod):
    method = "syndiff"
    default_sampler = "syndiff"
    valid_samplers = ("syndiff",)
    supports_context = False
    inference_networks = ("diff_gen_ct",)
    network_roles = ("diff_gen_ct", "diff_gen_mr", "diff_disc_ct", "diff_disc_mr",
                     "nd_gen_ct", "nd_gen_mr", "nd_disc_ct", "nd_disc_mr")
    default_method_config = {"lr": 1e-4, "betas": [0.5, 0.9], "lambda_cycle": 0.5, "lambda_adv": 1.0,
                             "r1_weight": 0.5, "paired": False}
    #: the two networks of the supervised variant (``paired: true``)
    paired_roles = ("diff_gen_ct", "diff_disc_ct")

    def __init__(self, networks, metadata):
        super().__init__(networks, metadata)
        self.schedule = FastDiffusionSchedule.from_config(metadata.get("process") or DEFAULT_PROCESS)
    @property
    def paired(self) -> bool:
        return bool(self.method_config.get("paired", False))

    @property
    def unpaired(self) -> bool:
        """The supervised variant trains on registered pairs; the paper's SynDiff on unpaired pools."""
        return not self.paired

    @classmethod
    def roles_for(cls, method_config):
        return cls.paired_roles if method_config.get("paired") else cls.network_roles

    @classmethod
    def _config_with(cls, process, options) -> dict:
        cfg = super()._config_with(process, options)
        if not isinstance(cfg["paired"], bool):
            raise InputError(f"SynDiff option 'paired' must be true or false, got {cfg['paired']!r}.",
                             "write paired: true (supervised, SynDiff Sec. V-C) or paired: false (the paper's "
                             "unpaired).")
        return cfg

    # ------------------------------------------------------------------ construction
    @classmethod
    def process_config(cls, process):
        cfg = dict(DEFAULT_PROCESS)
        cfg.update(process or {})
        return FastDiffusionSchedule.from_config(cfg).to_dict()

    @classmethod
    def build_networks(cls, preset, overrides, image_size, context):
        nets = {}
        for name in ("diff_gen_ct", "diff_gen_mr"):
            nets[name] = DiffusiveGenerator(gan_preset("diffusive_generator", preset, **{
                "in_channels": 2, "out_channels": 1, "image_size": image_size, **overrides.get(name, {})}))
        for name in ("diff_disc_ct", "diff_disc_mr"):
            nets[name] = TimeConditionedDiscriminator(gan_preset("time_discriminator", preset, **{
                "in_channels": 2, "time_embedding": True, "image_size": image_size, **overrides.get(name, {})}))
        extra = {"n_blocks": 6} if preset == "full" else {}  # SynDiff Sec. IV-B: six residual blocks
        for name in ("nd_gen_ct", "nd_gen_mr"):
            nets[name] = ResnetGenerator(gan_preset("resnet_generator", preset, **{
                "in_channels": 1, "out_channels": 1, "image_size": image_size, **extra, **overrides.get(name, {})}))
        for name in ("nd_disc_ct", "nd_disc_mr"):
            nets[name] = TimeConditionedDiscriminator(gan_preset("time_discriminator", preset, **{
                "in_channels": 1, "time_embedding": False, "image_size": image_size, **overrides.get(name, {})}))
        return nets

    def optimizer_groups(self):
        if self.paired:
            return {"generators": ["diff_gen_ct"], "discriminators": ["diff_disc_ct"]}
        return {"generators": ["diff_gen_ct", "diff_gen_mr", "nd_gen_ct", "nd_gen_mr"],
                "discriminators": ["diff_disc_ct", "diff_disc_mr", "nd_disc_ct", "nd_disc_mr"]}

    def train_step(self, state, data, generator):
        if self.paired:
            return syndiff_paired_train_step(self, state, data, generator)
        return syndiff_train_step(self, state, data, generator)

    # ------------------------------------------------------------------ inference
    def make_sampler(self, name=None, steps=None, **options):
        n = self.schedule.n_steps
        if name not in (None, "syndiff"):
            raise InputError(f"sampler {name!r} does not work with method 'syndiff': SynDiff samples with its own "
                             f"{n}-step adversarial posterior sampler.", "leave --sampler out (or use 'syndiff').")
        if steps not in (None, n):
            raise InputError(f"this SynDiff model was trained for exactly T/k = {n} steps (got --steps {steps}).",
                             "leave --steps out.")
        if options:
            raise InputError(f"the SynDiff sampler takes no options (got {sorted(options)}).", "leave them out.")
        return SynDiffSampler(steps=n)

    def sample(self, cond, sampler, generator=None, x0_hook=None, cancel=None) -> SampleOutput:
        """N = T/k calls of ``diff_gen_ct``; ``x0_hook(x0, x_t, t)`` (t = i / N) may replace each x0 estimate."""
        net = self.networks["diff_gen_ct"]
        sched, n = self.schedule, self.schedule.n_steps
        b, _, h, w = cond.shape
        dev = cond.device
        latent = net.config.latent_dim
        x = torch.randn((b, 1, h, w), generator=generator, device=dev)
        nfe = 0
        x0 = x
        for i in range(n, 0, -1):
            if cancel is not None and cancel():
                raise CancelledError("synthesis cancelled")
            z = torch.randn((b, latent), generator=generator, device=dev)
            t = torch.full((b,), float(i * sched.k), device=dev)  # = time_condition(i), made on the device
            x0 = net(x, cond, t, z).float()
            nfe += 1
            if x0_hook is not None:
                x0 = x0_hook(x0, x, torch.full((b,), i / n, device=dev))
            if i > 1:
                x = sched.posterior_sample(x, x0, i, torch.randn(x.shape, generator=generator, device=dev))
        return SampleOutput(x0, nfe)


# ---------------------------------------------------------------------------------------------- training
def syndiff_train_step(model: SynDiff, state, data, gen: torch.Generator) -> dict[str, float]:
    """One optimisation step of all eight SynDiff networks on an unpaired batch (SynDiff Eqs. 8-24).

    ``data.batch(B, gen)`` must return independently drawn MR and CT slices (:class:`~..data.UnpairedSliceDataset`).
    Order: forward passes of all generators; one Adam step of the discriminators on Eq. 24 (with the R1
    penalty of Eq. 12 on the diffusive discriminators' real inputs); one Adam step of the generators on Eq. 23.
    """
    cfg = model.method_config
    nets, sched = model.networks, model.schedule
    lam_cyc, lam_adv, eta = float(cfg["lambda_cycle"]), float(cfg["lambda_adv"]), float(cfg["r1_weight"])
    mr, ct = batch_on_device(data, state, gen)
    dev, b = mr.device, mr.shape[0]

    def randn(*shape):
        return torch.randn(shape, generator=gen).to(dev)

    # non-diffusive module: source estimates paired with each real target (Eq. 16)
    y_ct = nets["nd_gen_ct"](mr)   # CT-like image of the real MR's anatomy
    y_mr = nets["nd_gen_mr"](ct)   # MR-like image of the real CT's anatomy
    # diffusive module: denoise the real target guided by the estimated source (Eqs. 19-20)
    i_mr, prev_mr, xt_mr, t_mr = sched.sample_training_pair(mr, gen)
    i_ct, prev_ct, xt_ct, t_ct = sched.sample_training_pair(ct, gen)
    g_mr, g_ct = nets["diff_gen_mr"], nets["diff_gen_ct"]
    x0_mr = g_mr(xt_mr, y_ct, t_mr, randn(b, g_mr.config.latent_dim))
    x0_ct = g_ct(xt_ct, y_mr, t_ct, randn(b, g_ct.config.latent_dim))
    fake_prev_mr = sched.posterior_sample(xt_mr, x0_mr, i_mr, randn(*mr.shape))
    fake_prev_ct = sched.posterior_sample(xt_ct, x0_ct, i_ct, randn(*ct.shape))

    nd_d_mr, nd_d_ct = nets["nd_disc_mr"], nets["nd_disc_ct"]
    df_d_mr, df_d_ct = nets["diff_disc_mr"], nets["diff_disc_ct"]
    discs = [nd_d_mr, nd_d_ct, df_d_mr, df_d_ct]

    # ---- discriminators (Eq. 24 = lambda_2 (Eq. 18 for A and B) + lambda_2 (Eq. 12 for A and B))
    set_requires_grad(discs, True)
    d_nd = ns_discriminator_loss(nd_d_mr(mr), nd_d_mr(y_mr.detach())) \
        + ns_discriminator_loss(nd_d_ct(ct), nd_d_ct(y_ct.detach()))

    def diffusive_d(disc, prev, fake_prev, xt, t):
        real = prev.detach().requires_grad_(True)
        real_logits = disc(torch.cat([real, xt], 1), t)
        fake_logits = disc(torch.cat([fake_prev.detach(), xt], 1), t)
        return ns_discriminator_loss(real_logits, fake_logits), r1_penalty(real_logits, real, eta)

    l_mr, r1_mr = diffusive_d(df_d_mr, prev_mr, fake_prev_mr, xt_mr, t_mr)
    l_ct, r1_ct = diffusive_d(df_d_ct, prev_ct, fake_prev_ct, xt_ct, t_ct)
    d_diff = l_mr + l_ct + r1_mr + r1_ct
    loss_d = lam_adv * d_nd + lam_adv * d_diff
    state.update("discriminators", loss_d)

    # ---- generators (Eq. 23 = lambda_2 (Eq. 17) + lambda_2 (Eq. 11) + Eq. 22)
    set_requires_grad(discs, False)
    g_nd = ns_generator_loss(nd_d_mr(y_mr)) + ns_generator_loss(nd_d_ct(y_ct))
    g_diff = ns_generator_loss(df_d_mr(torch.cat([fake_prev_mr, xt_mr], 1), t_mr)) \
        + ns_generator_loss(df_d_ct(torch.cat([fake_prev_ct, xt_ct], 1), t_ct))
    rec_mr = nets["nd_gen_mr"](y_ct)  # Eq. 21
    rec_ct = nets["nd_gen_ct"](y_mr)
    cyc_nd = (mr - rec_mr).abs().mean() + (ct - rec_ct).abs().mean()
    cyc_diff = (mr - x0_mr).abs().mean() + (ct - x0_ct).abs().mean()
    l_cyc = lam_cyc * cyc_nd + lam_cyc * cyc_diff  # Eq. 22, lambda_1phi = lambda_1theta
    loss_g = lam_adv * g_nd + lam_adv * g_diff + l_cyc
    state.update("generators", loss_g)
    set_requires_grad(discs, True)
    out = {"loss": loss_g, "g_adv_nd": g_nd, "g_adv_diff": g_diff, "cycle_nd": cyc_nd, "cycle_diff": cyc_diff,
           "d_nd": d_nd, "d_diff": l_mr + l_ct, "r1": r1_mr + r1_ct}
    return {k: float(v.detach()) for k, v in out.items()}


def syndiff_paired_train_step(model: SynDiff, state, data, gen: torch.Generator) -> dict[str, float]:
    """One step of the supervised SynDiff variant (SynDiff Sec. V-C) on registered (MR, CT) pairs.

    Discriminator ``diff_disc_ct`` on Eq. 12 (non-saturating loss + R1 on the real x_{t-k}), then generator
    ``diff_gen_ct`` on ``lambda_adv`` Eq. 11 ``+ lambda_cycle ||CT - x0||_1`` with the real MR as its
    conditioning input (the pixel-wise loss in place of Eq. 22).
    """
    cfg = model.method_config
    sched = model.schedule
    lam_pix, lam_adv, eta = float(cfg["lambda_cycle"]), float(cfg["lambda_adv"]), float(cfg["r1_weight"])
    gen_ct, disc = model.networks["diff_gen_ct"], model.networks["diff_disc_ct"]
    mr, ct = batch_on_device(data, state, gen)
    dev, b = ct.device, ct.shape[0]

    def randn(*shape):
        return torch.randn(shape, generator=gen).to(dev)

    i, prev, xt, t = sched.sample_training_pair(ct, gen)  # Eqs. 8-9, as in the unpaired step
    x0 = gen_ct(xt, mr, t, randn(b, gen_ct.config.latent_dim))
    fake_prev = sched.posterior_sample(xt, x0, i, randn(*ct.shape))

    set_requires_grad([disc], True)
    real = prev.detach().requires_grad_(True)
    real_logits = disc(torch.cat([real, xt], 1), t)
    d_adv = ns_discriminator_loss(real_logits, disc(torch.cat([fake_prev.detach(), xt], 1), t))
    r1 = r1_penalty(real_logits, real, eta)
    state.update("discriminators", lam_adv * (d_adv + r1))

    set_requires_grad([disc], False)
    g_adv = ns_generator_loss(disc(torch.cat([fake_prev, xt], 1), t))
    l1 = (ct - x0.float()).abs().mean()
    loss_g = lam_adv * g_adv + lam_pix * l1
    state.update("generators", loss_g)
    set_requires_grad([disc], True)
    out = {"loss": loss_g, "g_adv_diff": g_adv, "l1": l1, "d_diff": d_adv, "r1": r1}
    return {k: float(v.detach()) for k, v in out.items()}


__all__ = ["SynDiff", "FastDiffusionSchedule", "SynDiffSampler", "syndiff_train_step", "syndiff_paired_train_step",
           "DEFAULT_PROCESS"]
