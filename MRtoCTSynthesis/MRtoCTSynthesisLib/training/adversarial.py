"""Losses, optimisation steps and the shared training loop of the non-diffusion-loss methods.

Losses
------
* :func:`ns_generator_loss` / :func:`ns_discriminator_loss`: the non-saturating GAN losses on logits,
  ``-log D(fake)`` for the generator and ``-log D(real) - log(1 - D(fake))`` for the discriminator
  (SynDiff Eqs. 11-12 and 17-18; ``-log sigmoid(l) = softplus(-l)``).
* :func:`r1_penalty`: ``eta / 2 * E ||grad_x D(x)||^2`` on real samples (the gradient-penalty term of
  SynDiff Eq. 12, eta = 0.5 in SynDiff Sec. IV-B). Built with ``create_graph=True`` so it back-propagates
  into the discriminator's parameters.
* :func:`gan_loss`: ``"vanilla"`` (binary cross-entropy on logits, pix2pix) or ``"lsgan"`` (least squares
  to 1/0, CycleGAN).
* :func:`gradient_penalty`: the WGAN-GP term ``lambda E (||grad_x C(x_hat)||_2 - 1)^2`` at random
  interpolates ``x_hat = e x_real + (1 - e) x_fake`` (lambda = 10).

Training
--------
A method that trains through this module (everything except ``ddpm``/``score_sde``) provides
``optimizer_groups()`` (optimiser name -> network names), ``method_config`` (defaults such as ``lr`` and
``betas``), ``inference_networks`` (the networks whose EMA copies are kept) and ``train_step(state, data,
generator) -> {"loss": float, ...}`` doing ONE optimisation step of all its networks. The step functions
of the baselines live here (:func:`unet_cnn_step`, :func:`pix2pix_step`, :func:`wgan_gp_step`,
:func:`cyclegan_step`); SynDiff's is :func:`.methods.syndiff.syndiff_train_step`. :func:`train_adversarial`
is the shared loop (Adam, EMA of the inference networks, NaN/Inf stop, progress callback); unpaired methods
(``model.unpaired``) get an :class:`~.data.UnpairedSliceDataset` view of paired data automatically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = [
    "ns_generator_loss", "ns_discriminator_loss", "r1_penalty", "gan_loss", "gradient_penalty", "ImagePool",
    "AdversarialSettings", "TrainState", "make_train_state", "train_adversarial",
    "unet_cnn_step", "pix2pix_step", "wgan_gp_step", "cyclegan_step", "set_requires_grad",
]


# ---------------------------------------------------------------------------------------------- losses
def ns_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``E[-log sigmoid(D(fake))]`` (SynDiff Eqs. 11 and 17)."""
    return F.softplus(-fake_logits.float()).mean()


def ns_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``E[-log sigmoid(D(real))] + E[-log(1 - sigmoid(D(fake)))]`` (SynDiff Eqs. 12 and 18, without the penalty)."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real_input: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight / 2 * E_batch ||d D(real) / d real||^2`` (SynDiff Eq. 12's gradient penalty, weight = eta).

    ``real_input`` must have ``requires_grad`` and ``real_logits`` must depend on it; the graph is kept
    (``create_graph=True``) so the penalty is differentiable w.r.t. the discriminator's parameters.
    """
    if not real_input.requires_grad:
        raise ValueError("r1_penalty needs real_input.requires_grad_(True) before the discriminator call")
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_input, create_graph=True)
    return 0.5 * weight * grad.float().pow(2).flatten(1).sum(1).mean()


def gan_loss(logits: torch.Tensor, target_real: bool, mode: str = "vanilla") -> torch.Tensor:
    """Adversarial loss of logits/scores against the label real (1) or fake (0).

    ``vanilla``: binary cross-entropy on logits (pix2pix); ``lsgan``: mean squared error to 1/0 (CycleGAN).
    """
    logits = logits.float()
    target = torch.ones_like(logits) if target_real else torch.zeros_like(logits)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    raise InputError(f"unknown GAN loss mode {mode!r}", "use 'vanilla' (BCE) or 'lsgan'")


def gradient_penalty(critic_fn: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     weight: float = 10.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP: ``weight * E[(||grad_x critic_fn(x_hat)||_2 - 1)^2]``, ``x_hat`` on random real-fake lines.

    ``critic_fn(x) -> [B]`` one score per sample (bind any condition in the closure); the norm is taken
    per sample over all of its pixels. For a linear critic ``<w, x>`` this is ``weight (||w|| - 1)^2``.
    """
    e = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), generator=generator, device="cpu").to(real)
    x_hat = (e * real.detach() + (1 - e) * fake.detach()).requires_grad_(True)
    scores = critic_fn(x_hat)
    (grad,) = torch.autograd.grad(scores.float().sum(), x_hat, create_graph=True)
    norm = grad.float().flatten(1).norm(dim=1)
    return weight * (norm - 1.0).pow(2).mean()


class ImagePool:
    """CycleGAN's history of generated images: with probability 1/2 a fake is swapped for an older one."""

    def __init__(self, size: int = 50):
        self.size = int(size)
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.size <= 0:
            return images.detach()
        out = []
        for img in images.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand((), generator=generator).item() < 0.5:
                j = int(torch.randint(0, self.size, (), generator=generator))
                out.append(self.images[j].clone())
                self.images[j] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)


def set_requires_grad(nets: Iterable[torch.nn.Module], flag: bool) -> None:
    """Switch parameter gradients of ``nets`` on or off (discriminators during a generator update)."""
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


# ---------------------------------------------------------------------------------------------- loop
@dataclass
class AdversarialSettings:
    """Settings of :func:`train_adversarial`; ``lr``/``betas`` None = the method's defaults (method_config)."""

    steps: int = 2000
    batch_size: int = 16
    lr: float | None = None
    betas: tuple[float, float] | None = None
    ema_decay: float = 0.999
    seed: int = 0
    grad_clip: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainState:
    """What a ``train_step`` needs besides the model and the data: optimisers, device, step, CycleGAN pools.

    :meth:`update` is the one place where a loss becomes a parameter update (zero grad, backward, the
    gradient all-reduce of multi-process runs, clipping, Adam step), so every method gets gradient clipping
    and distributed training the same way.
    """

    optimizers: dict[str, torch.optim.Optimizer]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 16
    step: int = 0
    pools: dict = field(default_factory=dict)
    grad_clip: float = 0.0
    #: average gradients over processes before each step (multi-process runs of methods whose networks
    #: are not wrapped in DistributedDataParallel, see :mod:`.training`)
    allreduce_grads: bool = False
    #: DistributedDataParallel wrappers by network name (the diffusion denoiser in multi-process runs)
    wrapped: dict = field(default_factory=dict)
    #: per-step values of every loss term (and "lr") since the loop started: {name: [...]}
    history: dict = field(default_factory=dict)

    def update(self, name: str, loss: torch.Tensor) -> None:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if self.allreduce_grads and params:
            import torch.distributed as dist

            world = dist.get_world_size()
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for p in params:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n
        if self.grad_clip and params:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        opt.step()


def make_train_state(model, settings: AdversarialSettings | None = None, device="cpu") -> TrainState:
    """Adam optimisers for ``model.optimizer_groups()`` with the method's (or the settings') lr and betas."""
    settings = settings or AdversarialSettings()
    cfg = getattr(model, "method_config", {})
    lr = float(settings.lr if settings.lr is not None else cfg.get("lr", 1e-4))
    betas = tuple(settings.betas if settings.betas is not None else cfg.get("betas", (0.9, 0.999)))
    if not lr > 0:
        raise InputError(f"the learning rate must be positive, got {lr}", "use e.g. --lr 1e-4")
    opts = {}
    for name, nets in model.optimizer_groups().items():
        params = [p for n in nets for p in model.networks[n].parameters()]
        opts[name] = torch.optim.Adam(params, lr=lr, betas=betas, eps=1e-8)
    return TrainState(optimizers=opts, device=torch.device(device), batch_size=settings.batch_size,
                      grad_clip=float(settings.grad_clip or 0.0))


def train_adversarial(model, dataset, settings: AdversarialSettings, device="cpu",
                      progress: Callable[[int, float], None] | None = None) -> dict:
    """Train any method with a ``train_step`` in memory, without checkpoints (tests, notebooks).

    A thin wrapper of :func:`.training.train_loop` (the loop behind ``mrtoct train``). Returns
    ``{"loss": [...], "terms": {name: [...]}, "ema": {network: module}, "seconds": s}``.
    """
    from .loop import train_loop

    return train_loop(model, dataset, steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                      betas=settings.betas, ema_decay=settings.ema_decay, seed=settings.seed,
                      grad_clip=settings.grad_clip, device=device, progress=progress)


def _batch(data, state: TrainState, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mr, ct = data.batch(state.batch_size, gen)
    return mr.to(state.device), ct.to(state.device)


# ---------------------------------------------------------------------------------------------- baseline steps
def unet_cnn_step(model, state: TrainState, data, gen: torch.Generator) -> dict[str, float]:
    """UNet-CNN (Lyu & Wang Sec. IV): one Adam step on ``||G(MR) - CT||^2`` (mean squared error)."""
    mr, ct = _batch(data, state, gen)
    loss = F.mse_loss(model.predict(mr).float(), ct)
    state.update("generator", loss)
    return {"loss": loss.item(), "mse": loss.item()}


def pix2pix_step(model, state: TrainState, data, gen: torch.Generator) -> dict[str, float]:
    """pix2pix: D on (MR, CT) pairs with ``gan_mode`` loss, then G with adversarial + ``l1_weight`` * L1."""
    cfg = model.method_config
    d = model.networks["discriminator"]
    mr, ct = _batch(data, state, gen)
    fake = model.predict(mr).float()
    set_requires_grad([d], True)
    loss_d = 0.5 * (gan_loss(d(torch.cat([mr, ct], 1)), True, cfg["gan_mode"])
                    + gan_loss(d(torch.cat([mr, fake.detach()], 1)), False, cfg["gan_mode"]))
    state.update("discriminator", loss_d)
    set_requires_grad([d], False)
    adv = gan_loss(d(torch.cat([mr, fake], 1)), True, cfg["gan_mode"])
    l1 = (fake - ct).abs().mean()
    loss_g = adv + cfg["l1_weight"] * l1
    state.update("generator", loss_g)
    set_requires_grad([d], True)
    return {"loss": loss_g.item(), "g_adv": adv.item(), "l1": l1.item(), "d": loss_d.item()}


def wgan_gp_step(model, state: TrainState, data, gen: torch.Generator) -> dict[str, float]:
    """WGAN-GP (Gulrajani et al. Alg. 1 with a conditional critic) + MSE fidelity (Lyu & Wang).

    ``n_critic`` critic updates, each on a fresh batch: ``C(MR, G(MR)) - C(MR, CT) + 10 GP``; then one
    generator update on a fresh batch: ``-C(MR, G(MR)) + mse_weight * MSE(G(MR), CT)``.
    """
    cfg = model.method_config
    critic = model.networks["critic"]

    def score(mr, ct):
        return critic(torch.cat([mr, ct], 1)).float().mean(dim=(1, 2, 3))

    set_requires_grad([critic], True)
    for _ in range(int(cfg["n_critic"])):
        mr, ct = _batch(data, state, gen)
        with torch.no_grad():
            fake = model.predict(mr).float()
        w_dist = score(mr, ct).mean() - score(mr, fake).mean()
        gp = gradient_penalty(lambda x, mr=mr: score(mr, x), ct, fake, cfg["gp_weight"], generator=gen)
        loss_c = -w_dist + gp
        state.update("critic", loss_c)
    set_requires_grad([critic], False)
    mr, ct = _batch(data, state, gen)
    fake = model.predict(mr).float()
    adv = -score(mr, fake).mean()
    mse = F.mse_loss(fake, ct)
    loss_g = adv + cfg["mse_weight"] * mse
    state.update("generator", loss_g)
    set_requires_grad([critic], True)
    return {"loss": loss_g.item(), "g_adv": adv.item(), "mse": mse.item(), "critic": loss_c.item(),
            "gp": gp.item(), "w_distance": w_dist.item()}


def cyclegan_step(model, state: TrainState, data, gen: torch.Generator) -> dict[str, float]:
    """CycleGAN on unpaired slices: LSGAN + ``lambda_cycle`` * cycle L1 + ``lambda_identity * lambda_cycle`` *
    identity L1 for both generators (one Adam), then both discriminators on pooled fakes (halved loss)."""
    cfg = model.method_config
    g_ct, g_mr = model.networks["gen_ct"], model.networks["gen_mr"]
    d_ct, d_mr = model.networks["disc_ct"], model.networks["disc_mr"]
    mr, ct = _batch(data, state, gen)
    lam, lam_id, mode = cfg["lambda_cycle"], cfg["lambda_identity"], cfg["gan_mode"]
    fake_ct, fake_mr = g_ct(mr), g_mr(ct)
    rec_mr, rec_ct = g_mr(fake_ct), g_ct(fake_mr)
    set_requires_grad([d_ct, d_mr], False)
    adv = gan_loss(d_ct(fake_ct), True, mode) + gan_loss(d_mr(fake_mr), True, mode)
    cyc = (rec_mr - mr).abs().mean() + (rec_ct - ct).abs().mean()
    loss_g = adv + lam * cyc
    idt = torch.zeros((), device=mr.device)
    if lam_id > 0:
        idt = (g_ct(ct) - ct).abs().mean() + (g_mr(mr) - mr).abs().mean()
        loss_g = loss_g + lam * lam_id * idt
    state.update("generators", loss_g)
    set_requires_grad([d_ct, d_mr], True)
    pools = state.pools
    if not pools:
        pools.update(ct=ImagePool(cfg["pool_size"]), mr=ImagePool(cfg["pool_size"]))
    old_ct, old_mr = pools["ct"].query(fake_ct, gen), pools["mr"].query(fake_mr, gen)
    loss_d = 0.5 * (gan_loss(d_ct(ct), True, mode) + gan_loss(d_ct(old_ct), False, mode)) \
        + 0.5 * (gan_loss(d_mr(mr), True, mode) + gan_loss(d_mr(old_mr), False, mode))
    state.update("discriminators", loss_d)
    return {"loss": loss_g.item(), "g_adv": adv.item(), "cycle": cyc.item(), "identity": idt.item(),
            "d": loss_d.item()}
