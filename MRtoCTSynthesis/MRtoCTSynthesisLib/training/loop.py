"""Training: one loop for every method (the resumable runs behind ``mrtoct train`` are :mod:`.run`).

Every method offers ``optimizer_groups()``, ``inference_networks``, ``method_config`` (lr, betas and loss
weights) and ``train_step(state, data, generator)``, which makes one optimisation step of all its networks
through :meth:`.state.TrainState.update` (zero grad, backward, multi-process gradient averaging,
clipping, Adam). :func:`train_loop` is the loop around it; :class:`TrainingRun` adds what a long run
needs: a config file, a patient-level split, slice caching, validation, logs, checkpoints and resume.

The loop (:func:`train_loop`)
-----------------------------
* Deterministic by construction: before step ``s`` the data generator and torch's global generator are
  seeded from ``(seed, rank, s)`` (:func:`step_seed`). The batch indices, diffusion times, noise, latents
  and dropout of a step therefore depend only on the step number, so a resumed run draws exactly what an
  uninterrupted run draws, without saving generator states.
* The learning rate is a pure function of the step (:func:`lr_factor`: linear warm-up, then constant or a
  linear decay to 0 from ``decay_start``, CycleGAN-style), so it needs no scheduler state either.
* EMA copies of the inference networks (decay ``min(d, (1 + s) / (10 + s))``), used by validation and saved
  as the checkpoint's ``ema.*`` weights, which inference loads.
* A non-finite loss stops the run with a message naming the step and what to change; the last good
  checkpoint stays in place.
* Early stop (``train.early_stop``, :class:`LossPlateau`): Lyu & Wang's rule, at least 100 epochs and then
  stop once an epoch's mean loss is not 1 % below the mean of the previous 20 epochs; the callback returns
  True and every process leaves the loop after the same step.
* AMP (``amp``): bf16 autocast on CUDA, and on a CPU when asked for explicitly (``train.amp: true``; the
  weights, optimiser and normalisations stay fp32, convolutions run in bf16: ~1.45x faster per step on the
  2-core AVX-512 CPU of benchmarks/, used by the bundled default model's recipe); ``auto`` keeps CPU runs fp32.
* Multi-process (``torchrun``): each process draws its own batches (seeded by its rank); the diffusion
  denoiser is wrapped in DistributedDataParallel, and the methods with several networks (GANs, SynDiff)
  average their gradients with one all-reduce per optimiser step instead, because their steps call a
  network several times per update, switch gradients on and off, and take gradients of gradients (R1,
  WGAN-GP), none of which DistributedDataParallel supports. Both give every process the same update.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..data.cases import UnpairedSliceDataset
from ..errors import InputError
from .state import (
    EMA,
    AdversarialSettings,
    TrainState,
    lr_factor,
    process_group,
    restore_state,
    step_seed,
)


def train_loop(model, dataset, *, steps: int, batch_size: int = 16, lr: float | None = None, betas=None,
               eps: float = 1e-8, ema_decay: float = 0.999, seed: int = 0, grad_clip: float = 0.0,
               warmup_steps: int = 0, decay: str = "none", decay_start: float = 0.5, device="cpu",
               amp: bool = False, progress: Callable[[int, float], None] | None = None,
               callback: Callable[[int, dict, Any, dict], None] | None = None, resume: dict | None = None) -> dict:
    """Train ``model`` (any method) on ``dataset`` for ``steps`` optimisation steps; see the module docs.

    ``callback(step_done, out, state, ema)`` runs after each step (validation, logs, checkpoints) and may
    return True to end the run after that step;
    ``resume = {"tensors": ..., "doc": ..., "ema": {name: state_dict}}`` continues a saved run. Returns
    ``{"loss": [...], "terms": {...}, "ema": {network: module}, "seconds": s, "state": TrainState}``.
    """
    if getattr(model, "unpaired", False) and not getattr(dataset, "unpaired", False):
        dataset = UnpairedSliceDataset.from_paired(dataset)
    if not getattr(model, "unpaired", False) and getattr(dataset, "unpaired", False):
        raise InputError(f"method {model.method!r} trains on paired slices, but the data are unpaired.",
                         "use a SliceDataset of registered MR/CT pairs, or an unpaired method (syndiff, cyclegan).")
    device = torch.device(device)
    dist = process_group()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    for net in model.networks.values():
        net.to(device).train()
    cfg = getattr(model, "method_config", {})
    lr = float(lr if lr is not None else cfg.get("lr", 1e-4))
    betas = tuple(betas if betas is not None else cfg.get("betas", (0.9, 0.999)))
    if not lr > 0:
        raise InputError(f"the learning rate must be positive, got {lr}", "use e.g. --lr 1e-4")
    opts = {name: torch.optim.Adam([p for n in nets for p in model.networks[n].parameters()], lr=lr, betas=betas,
                                   eps=eps)
            for name, nets in model.optimizer_groups().items()}
    state = TrainState(optimizers=opts, device=device, batch_size=batch_size, grad_clip=float(grad_clip or 0.0))
    ema = {n: EMA(model.networks[n], ema_decay) for n in model.inference_networks} if ema_decay else {}
    if resume:
        for name, net in model.networks.items():
            net.load_state_dict(resume["networks"][name])
        for name, e in ema.items():
            e.shadow.load_state_dict(resume["ema"][name])
        restore_state(state, resume["tensors"], resume["doc"])
    if dist:
        if set(opts) == {"denoiser"}:  # the diffusion methods: one network, one forward-backward per step
            state.wrapped["denoiser"] = DDP(model.networks["denoiser"],
                                            device_ids=[device.index] if device.type == "cuda" else None)
        else:
            state.allreduce_grads = True
            for net in model.networks.values():  # identical start on every process
                for t in list(net.parameters()) + list(net.buffers()):
                    dist.broadcast(t.data, 0)
    gen = torch.Generator()
    losses: list[float] = []
    terms = state.history
    t0 = time.perf_counter()
    for step in range(state.step, steps):
        s = step_seed(seed, rank, step)
        gen.manual_seed(s)
        torch.manual_seed(s)  # dropout, latents and any draw without an explicit generator
        f = lr_factor(step, steps, warmup_steps, decay, decay_start)
        for opt in opts.values():
            for g in opt.param_groups:
                g["lr"] = lr * f
        with torch.autocast(device.type if device.type in ("cuda", "cpu") else "cuda", dtype=torch.bfloat16,
                            enabled=bool(amp) and device.type in ("cuda", "cpu")):
            out = model.train_step(state, dataset, gen)
        check = torch.tensor([out["loss"]], dtype=torch.float64, device=device)
        if dist:
            dist.all_reduce(check)
            check /= world
        bad = {k: v for k, v in out.items() if not math.isfinite(v)} or (
            {"loss (another process)": check.item()} if not math.isfinite(check.item()) else {})
        if bad:
            raise InputError(f"the {model.method} training loss became non-finite at step {step + 1} ({bad}).",
                             "lower the learning rate (e.g. --lr 5e-5) or keep gradient clipping on, check the data "
                             "for extreme values, then continue from the last checkpoint with --resume.")
        for name, e in ema.items():
            e.update(model.networks[name], step)
        state.step = step + 1
        out = {**out, "loss": check.item() if dist else out["loss"], "lr": lr * f}
        losses.append(out["loss"])
        for k, v in out.items():
            terms.setdefault(k, []).append(v)
        if progress:
            progress(step, out["loss"])
        if callback and callback(step + 1, out, state, ema):
            break  # the callback asked to stop (a loss plateau); every process decides the same way
    if dist:  # every process must end with the same weights; a silent divergence would corrupt the model
        total = torch.stack([sum(p.detach().double().sum() for p in net.parameters())
                             for net in model.networks.values()])
        gathered = [torch.zeros_like(total) for _ in range(world)]
        dist.all_gather(gathered, total)
        if not all(torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError("the training processes ended with different weights (distributed sync failed)")
    for net in model.networks.values():
        net.eval()
    return {"loss": losses, "terms": terms, "ema": {n: e.shadow for n, e in ema.items()},
            "seconds": time.perf_counter() - t0, "state": state}


# ---------------------------------------------------------------------------------------------- in-memory wrapper
@dataclass
class TrainSettings:
    """Settings of :func:`train_diffusion` (the in-memory diffusion loop used by tests and notebooks)."""

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


def train_diffusion(model, dataset, settings: TrainSettings, device="cpu",
                    progress: Callable[[int, float], None] | None = None) -> dict:
    """Train a :class:`.methods.ConditionalDiffusion` in memory; returns the history (EMA module under "ema")."""
    hist = train_loop(model, dataset, steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                      betas=settings.betas, eps=settings.eps, ema_decay=settings.ema_decay, seed=settings.seed,
                      grad_clip=settings.grad_clip, warmup_steps=settings.lr_warmup, device=device, progress=progress)
    return {**hist, "ema": hist["ema"].get("denoiser")}


# ---------------------------------------------------------------------------------------------- early stop
class LossPlateau:
    """Lyu & Wang's stopping rule (Sec. IV): train at least ``min_epochs`` epochs, then stop after the first
    epoch whose mean training loss is not at least ``min_decrease`` (1 %) of its size below the mean of the
    ``window`` (20) epochs before it (``loss > ref - min_decrease * |ref|``, so negative losses work too).

    :meth:`add` takes the (process-averaged) loss of every step; an epoch is ``steps_per_epoch`` steps.
    :meth:`state` / ``LossPlateau(..., state=...)`` carry the epoch means and the running partial epoch
    through a checkpoint, so a resumed run stops at the same step as an uninterrupted one.
    """

    def __init__(self, steps_per_epoch: int, min_epochs: int = 100, window: int = 20, min_decrease: float = 0.01,
                 state: dict | None = None):
        self.steps_per_epoch, self.min_epochs = max(1, int(steps_per_epoch)), int(min_epochs)
        self.window, self.min_decrease = int(window), float(min_decrease)
        state = state or {}
        self.epochs: list[float] = [float(v) for v in state.get("epochs", [])]
        self.partial_sum, self.partial_n = (float(v) for v in state.get("partial", (0.0, 0)))
        self.reference: float | None = None

    def add(self, step: int, loss: float) -> bool:
        """Record the loss of step ``step`` (1-based); True if the run should stop after this step."""
        self.partial_sum += float(loss)
        self.partial_n += 1
        if step % self.steps_per_epoch:
            return False
        self.epochs.append(self.partial_sum / self.partial_n)
        self.partial_sum, self.partial_n = 0.0, 0
        return self.plateaued()

    def plateaued(self) -> bool:
        if len(self.epochs) < max(self.min_epochs, self.window + 1):
            return False
        self.reference = sum(self.epochs[-self.window - 1:-1]) / self.window
        # "1 % below" relative to the reference's size, so the rule also holds for losses below zero
        return self.epochs[-1] > self.reference - self.min_decrease * abs(self.reference)

    def state(self) -> dict:
        return {"epochs": list(self.epochs), "partial": [self.partial_sum, self.partial_n]}


def train_adversarial(model, dataset, settings: AdversarialSettings, device="cpu",
                      progress: Callable[[int, float], None] | None = None) -> dict:
    """Train any method with a ``train_step`` in memory, without checkpoints (tests, notebooks).

    A thin wrapper of :func:`train_loop` (the loop behind ``mrtoct train``). Returns
    ``{"loss": [...], "terms": {name: [...]}, "ema": {network: module}, "seconds": s}``.
    """
    return train_loop(model, dataset, steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                      betas=settings.betas, ema_decay=settings.ema_decay, seed=settings.seed,
                      grad_clip=settings.grad_clip, device=device, progress=progress)
