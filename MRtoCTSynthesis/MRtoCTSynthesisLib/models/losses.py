"""Losses and helpers shared by the adversarial methods' training steps (pix2pix, WGAN-GP, CycleGAN, SynDiff).

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
* :class:`ImagePool` (CycleGAN's history of fakes), :func:`set_requires_grad`, :func:`batch_on_device`.

Each method's own ``train_step`` (one optimisation step of all its networks) lives in its method file; the
loop around it is :func:`...training.loop.train_loop`.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["ns_generator_loss", "ns_discriminator_loss", "r1_penalty", "gan_loss", "gradient_penalty", "ImagePool",
           "set_requires_grad", "batch_on_device"]


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


def batch_on_device(data, state, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``(mr, ct)`` batch of ``state.batch_size`` slices from ``data``, on the training device."""
    mr, ct = data.batch(state.batch_size, gen)
    return mr.to(state.device), ct.to(state.device)
