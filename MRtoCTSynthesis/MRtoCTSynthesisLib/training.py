"""The engine's training loop for the conditional diffusion methods (``ddpm``, ``score_sde``).

Adam with the papers' settings (lr 1e-4, betas (0.9, 0.999), eps 1e-8: Lyu & Wang Sec. IV), the
eps-prediction loss of :func:`.methods.diffusion_loss`, gradient clipping, an exponential moving
average (EMA) of the weights that inference uses, and a stop with a clear message when the loss
turns NaN/Inf. ``training/train.py`` and ``mrtoct train`` wrap this with configs and checkpoints.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .errors import InputError
from .methods import diffusion_loss


@dataclass
class TrainSettings:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    lr_warmup: int = 100

    def to_dict(self) -> dict:
        return asdict(self)


class EMA:
    """Exponential moving average of a network's parameters and buffers."""

    def __init__(self, network: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(network).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, network: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up: early averages are not dominated by init
        shadow = list(self.shadow.parameters())
        # one fused update for all tensors (a Python loop over parameters cost ~40 ms a step on the tiny UNet)
        torch._foreach_lerp_(shadow, [p.detach() for p in network.parameters()], 1 - d)
        for s, b in zip(self.shadow.buffers(), network.buffers()):
            s.copy_(b)


def train_diffusion(model, dataset, settings: TrainSettings, device="cpu",
                    progress: Callable[[int, float], None] | None = None) -> dict:
    """Train ``model`` (a :class:`.methods.ConditionalDiffusion`) on ``dataset``; returns the history.

    The EMA copy is returned under ``history["ema"]`` (a module), the per-step losses under ``"loss"``.
    """
    gen = torch.Generator().manual_seed(settings.seed)
    net = model.network.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, settings.lr_warmup)))
    ema = EMA(net, settings.ema_decay)
    losses, t0 = [], time.perf_counter()
    for step in range(settings.steps):
        mr, ct = dataset.batch(settings.batch_size, gen)
        loss = diffusion_loss(net, model.process, mr.to(device), ct.to(device), generator=gen,
                              prediction=model.prediction)
        if not math.isfinite(loss.item()):
            raise InputError(f"the training loss became {loss.item()} at step {step}.",
                             "lower the learning rate (e.g. --lr 5e-5) or enable gradient clipping; check the data for "
                             "extreme values.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
        opt.step()
        sched.step()
        ema.update(net, step)
        losses.append(loss.item())
        if progress:
            progress(step, loss.item())
    net.eval()
    return {"loss": losses, "ema": ema.shadow, "seconds": time.perf_counter() - t0}
