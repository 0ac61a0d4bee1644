"""Training: one loop for every method, and the resumable runs behind ``mrtoct train`` / ``training/train.py``.

Every method offers ``optimizer_groups()``, ``inference_networks``, ``method_config`` (lr, betas and loss
weights) and ``train_step(state, data, generator)``, which makes one optimisation step of all its networks
through :meth:`.adversarial.TrainState.update` (zero grad, backward, multi-process gradient averaging,
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
* AMP: bf16 autocast on CUDA (``amp``); CPU runs stay fp32.
* Multi-process (``torchrun``): each process draws its own batches (seeded by its rank); the diffusion
  denoiser is wrapped in DistributedDataParallel, and the methods with several networks (GANs, SynDiff)
  average their gradients with one all-reduce per optimiser step instead, because their steps call a
  network several times per update, switch gradients on and off, and take gradients of gradients (R1,
  WGAN-GP), none of which DistributedDataParallel supports. Both give every process the same update.

Runs (:class:`TrainingRun`)
---------------------------
A run folder holds ``config.yaml`` (the resolved config), ``split.json``, ``last.safetensors`` (networks,
EMA, optimiser moments and step: everything resume needs, written atomically every
``checkpoint_every`` steps), ``best.safetensors`` (EMA weights with the best validation PSNR),
``model.safetensors`` (the final EMA model for ``mrtoct synthesize``), ``log.jsonl`` and ``tensorboard/``
(when the ``tensorboard`` package is installed). ``resume=True`` continues from ``last.safetensors``: same
weights, optimiser moments, EMA, CycleGAN image pools and data order, so the final weights equal those of
an uninterrupted run (bit for bit on the same device and thread count).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import InputError

# ---------------------------------------------------------------------------------------------- config
#: every key a training config may hold, with the engine's defaults. ``training/configs/<method>.yaml``
#: give each method's paper values with citations; None = the method's own default (``method_config``).
DEFAULT_CONFIG: dict[str, dict[str, Any] | str] = {
    "method": "ddpm",
    "model": {"image_size": 64, "context": 0, "unet": "tiny", "prediction": "eps", "process": None, "options": {}},
    "data": {"root": None, "split": None, "val_fraction": 0.1, "test_fraction": 0.2, "split_seed": 0,
             "register": False, "cache": True, "cache_dir": None, "disjoint_cases": False},
    "optim": {"lr": None, "betas": None, "eps": 1e-8, "grad_clip": 1.0, "warmup_steps": 0, "decay": "none",
              "decay_start": 0.5},
    "train": {"epochs": 100, "steps": None, "batch_size": 2, "ema_decay": 0.999, "amp": "auto", "seed": 0,
              "device": "auto", "log_every": 50, "val_every": 500, "val_cases": 2, "val_slices": 8,
              "val_sampler": None, "val_steps": 10, "checkpoint_every": 500,
              "early_stop": {"enabled": False, "min_epochs": 100, "window": 20, "min_decrease": 0.01,
                             "term": "loss"}},
}
#: config sections whose change makes a checkpoint unusable for --resume
RESUME_KEYS = ("method", "model", "optim", "train.batch_size", "train.seed", "train.ema_decay")


def _merge(base: dict, update: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if key not in base:
            raise InputError(f"unknown config key {where}{key!r}.",
                             f"known keys here: {', '.join(sorted(base))} (check the spelling).")
        if isinstance(base[key], dict) and key != "options" and key != "process":
            if not isinstance(value, dict):
                raise InputError(f"config key {where}{key!r} must be a mapping, got {value!r}.",
                                 f"write it as a section with keys {', '.join(sorted(base[key]))}.")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def default_config(method: str = "ddpm") -> dict:
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg["method"] = method
    return cfg


def _contained(path_text: str, base: Path, key: str, config_path: Path) -> Path:
    """A relative path of a config file, resolved against the config's folder, which it may not leave."""
    p = Path(os.path.expanduser(str(path_text)))
    if p.is_absolute():
        return p  # written out in full: no surprise
    resolved = (base / p).resolve()
    if not resolved.is_relative_to(base.resolve()):
        raise InputError(f"config {config_path}: {key} {path_text!r} points outside the config's folder "
                         f"({base}) through '..' or a link.",
                         "write an absolute path, or pass the folder on the command line (e.g. --data DIR).")
    return resolved


def load_config(path) -> dict:
    """Read a YAML training config over :data:`DEFAULT_CONFIG` (unknown keys are refused).

    Relative ``data.root``, ``data.split`` and ``data.cache_dir`` are taken relative to the config file's
    folder and must stay inside it (absolute paths are used as written).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist.", "see training/configs/ for one per method.")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise InputError(f"config file {path} is not valid YAML: {e}", "fix the indicated line.") from e
    if not isinstance(doc, dict):
        raise InputError(f"config file {path} must be a mapping of sections.", "see training/configs/ddpm.yaml.")
    cfg = _merge(default_config(doc.get("method", "ddpm")), doc, "")
    for key in ("root", "split", "cache_dir"):
        if cfg["data"][key]:
            cfg["data"][key] = str(_contained(cfg["data"][key], path.parent, f"data.{key}", path))
    return validate_config(cfg)


def apply_overrides(cfg: dict, items: list[str]) -> dict:
    """``["train.steps=100", "optim.lr=2e-4"]`` (values parsed as YAML) over ``cfg``."""
    import yaml

    cfg = copy.deepcopy(cfg)
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set {item!r} is not KEY=VALUE.", "e.g. --set train.steps=100")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        update: dict = {}
        node = update
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
        cfg = _merge(cfg, update, "")
    return validate_config(cfg)


def _get(cfg: dict, dotted: str):
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def validate_config(cfg: dict) -> dict:
    from ..models.methods import METHODS

    if cfg["method"] not in METHODS or cfg["method"] == "ddmm_synth":
        trainable = [m for m in METHODS if m != "ddmm_synth"]
        raise InputError(f"method {cfg['method']!r} cannot be trained.",
                         f"use one of {', '.join(trainable)} (ddmm_synth samples a trained ddpm).")
    t, o, d = cfg["train"], cfg["optim"], cfg["data"]
    # YAML 1.1 reads "3e-4" (no dot) as a string: accept numbers written that way
    for section in (t, o, d, cfg["model"], t["early_stop"]):
        for key, value in section.items():
            if isinstance(value, str):
                try:
                    section[key] = float(value) if not value.strip().lstrip("-").isdigit() else int(value)
                except ValueError:
                    pass

    def positive(name, value, integer=True, allow_none=False, allow_zero=False):
        if value is None and allow_none:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= 0 if allow_zero else value > 0) and (not integer or float(value).is_integer())
        if not ok:
            raise InputError(f"config {name} must be a {'non-negative' if allow_zero else 'positive'} "
                             f"{'integer' if integer else 'number'}, got {value!r}.", f"set {name} to e.g. 1.")

    positive("train.batch_size", t["batch_size"])
    positive("train.steps", t["steps"], allow_none=True)
    positive("train.epochs", t["epochs"], integer=False)
    for k in ("log_every", "val_every", "checkpoint_every", "val_cases", "val_slices", "val_steps"):
        positive(f"train.{k}", t[k], allow_zero=k in ("val_every", "val_cases"))
    es = t["early_stop"]
    if not isinstance(es["enabled"], bool):
        raise InputError(f"config train.early_stop.enabled must be true or false, got {es['enabled']!r}.",
                         "use true to stop on a loss plateau (Lyu & Wang Sec. IV), false to train all epochs.")
    positive("train.early_stop.min_epochs", es["min_epochs"], allow_zero=True)
    positive("train.early_stop.window", es["window"])
    positive("train.early_stop.min_decrease", es["min_decrease"], integer=False, allow_zero=True)
    if es["min_decrease"] >= 1:
        raise InputError(f"config train.early_stop.min_decrease must be below 1, got {es['min_decrease']!r}.",
                         "use a fraction, e.g. 0.01 for Lyu & Wang's 1 %.")
    if not isinstance(es["term"], str) or not es["term"]:
        raise InputError(f"config train.early_stop.term must name a logged loss term, got {es['term']!r}.",
                         "use 'loss' (the total), or a term of the method such as 'mse'.")
    positive("optim.lr", o["lr"], integer=False, allow_none=True)
    positive("optim.grad_clip", o["grad_clip"], integer=False, allow_zero=True)
    positive("optim.warmup_steps", o["warmup_steps"], allow_zero=True)
    if not 0 <= float(t["ema_decay"]) < 1:
        raise InputError(f"config train.ema_decay must be in [0, 1), got {t['ema_decay']!r}.", "use e.g. 0.999 (0 = no EMA).")
    if o["decay"] not in ("none", "linear"):
        raise InputError(f"config optim.decay must be 'none' or 'linear', got {o['decay']!r}.", "use 'linear' for "
                         "CycleGAN-style decay to 0.")
    if not 0 <= float(o["decay_start"]) < 1:
        raise InputError(f"config optim.decay_start must be in [0, 1), got {o['decay_start']!r}.", "use e.g. 0.5.")
    if t["amp"] not in ("auto", True, False):
        raise InputError(f"config train.amp must be auto, true or false, got {t['amp']!r}.", "use auto.")
    if o["betas"] is not None and (not isinstance(o["betas"], (list, tuple)) or len(o["betas"]) != 2
                                   or not all(0 <= float(b) < 1 for b in o["betas"])):
        raise InputError(f"config optim.betas must be two numbers in [0, 1), got {o['betas']!r}.", "e.g. [0.9, 0.999].")
    if not (0 <= float(d["val_fraction"]) < 1 and 0 <= float(d["test_fraction"]) < 1):
        raise InputError("config data.val_fraction and data.test_fraction must be in [0, 1).", "e.g. 0.1 and 0.2.")
    return cfg


# ---------------------------------------------------------------------------------------------- pieces
def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of step ``step`` on process ``rank`` (a 63-bit mix, distinct across ranks and steps)."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(rank) * 0xBF58476D1CE4E5B9 + int(step) * 0x94D049BB133111EB)
    x &= (1 << 64) - 1
    x ^= x >> 31
    return x & ((1 << 63) - 1)


def lr_factor(step: int, total: int, warmup: int = 0, decay: str = "none", decay_start: float = 0.5) -> float:
    """Learning-rate multiplier at ``step`` of ``total``: linear warm-up over ``warmup`` steps, then 1, or with
    ``decay="linear"`` a linear decay to 0 over the steps after ``decay_start * total`` (CycleGAN; SynDiff
    Sec. IV-B.2: "linearly decayed to 0 in the last 50 epochs" of 100 = ``decay_start`` 0.5)."""
    f = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if decay == "linear":
        start = int(decay_start * total)
        if step >= start:
            f *= max(0.0, 1.0 - (step - start) / max(1, total - start))
    return f


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


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _state_tensors(state) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimiser moments (+ CycleGAN pools) as flat tensors, and the JSON part (param groups, step)."""
    tensors, groups = {}, {}
    for name, opt in state.optimizers.items():
        sd = opt.state_dict()
        groups[name] = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
        for idx, st in sd["state"].items():
            for key, value in st.items():
                tensors[f"opt.{name}.{idx}.{key}"] = torch.as_tensor(value)
    for pool_name, pool in state.pools.items():
        for i, img in enumerate(pool.images):
            tensors[f"pool.{pool_name}.{i}"] = img
    return tensors, {"param_groups": groups, "step": state.step, "pools": {k: len(v.images) for k, v in state.pools.items()},
                     "pool_sizes": {k: v.size for k, v in state.pools.items()}}


def _restore_state(state, tensors: dict[str, torch.Tensor], doc: dict) -> None:
    from .adversarial import ImagePool

    for name, opt in state.optimizers.items():
        sd = opt.state_dict()
        per: dict[int, dict] = {}
        prefix = f"opt.{name}."
        for key, t in tensors.items():
            if key.startswith(prefix):
                idx, k = key[len(prefix):].split(".", 1)
                per.setdefault(int(idx), {})[k] = t.to(state.device) if k != "step" else t
        groups = doc["param_groups"].get(name)
        if groups is None or len(groups) != len(sd["param_groups"]):
            raise InputError(f"the checkpoint has no optimiser state for {name!r}.", "resume with the same method.")
        sd["state"] = per
        sd["param_groups"] = [{**g, "params": og["params"]} for g, og in zip(groups, sd["param_groups"])]
        opt.load_state_dict(sd)
    for pool_name, n in doc.get("pools", {}).items():
        pool = ImagePool(doc["pool_sizes"][pool_name])
        pool.images = [tensors[f"pool.{pool_name}.{i}"].to(state.device) for i in range(n)]
        state.pools[pool_name] = pool
    state.step = int(doc["step"])


# ---------------------------------------------------------------------------------------------- loop
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
    from .adversarial import TrainState
    from ..data.cases import UnpairedSliceDataset

    if getattr(model, "unpaired", False) and not getattr(dataset, "unpaired", False):
        dataset = UnpairedSliceDataset.from_paired(dataset)
    if not getattr(model, "unpaired", False) and getattr(dataset, "unpaired", False):
        raise InputError(f"method {model.method!r} trains on paired slices, but the data are unpaired.",
                         "use a SliceDataset of registered MR/CT pairs, or an unpaired method (syndiff, cyclegan).")
    device = torch.device(device)
    dist = _dist()
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
        _restore_state(state, resume["tensors"], resume["doc"])
    if dist:
        from torch.nn.parallel import DistributedDataParallel as DDP

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
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(amp) and device.type == "cuda"):
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
        total = torch.stack([sum(p.detach().double().sum() for p in net.parameters()) for net in model.networks.values()])
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


# ---------------------------------------------------------------------------------------------- runs
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for, but this torch build sees no CUDA GPU.",
                         "use --device cpu (or auto).")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


class _Logger:
    """log.jsonl (always) + TensorBoard (when installed), written by process 0 only."""

    def __init__(self, run_dir: Path, start_step: int, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():  # keep only what happened up to the checkpoint we continue from
            keep = [ln for ln in self.path.read_text(encoding="utf-8").splitlines() if ln.strip()
                    and json.loads(ln).get("step", 0) <= start_step]
            self.path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        except ImportError:
            print("note: the tensorboard package is not installed; metrics go to log.jsonl only "
                  "(pip install tensorboard for TensorBoard logs)", file=sys.stderr)

    def log(self, step: int, values: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, prefix: values}) + "\n")
        if self.tb:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self):
        if self.tb:
            self.tb.close()


class TrainingRun:
    """One training run folder (see the module docs). ``TrainingRun(cfg, run_dir).run(resume)``."""

    def __init__(self, cfg: dict, run_dir, out: Path | None = None, command: str | None = None):
        self.cfg = validate_config(copy.deepcopy(cfg))
        self.run_dir = Path(run_dir)
        self.out = Path(out) if out else None
        self.command = command
        if not self.cfg["data"]["root"]:
            raise InputError("no training data given.", "pass --data DIR (a folder of <case>/mr.nii.gz + ct.nii.gz) "
                             "or set data.root in the config.")

    # ------------------------------------------------------------------ setup
    def _split(self, resume: bool, unpaired: bool) -> dict[str, list[Path]]:
        """The run's patient split. Unpaired methods may use single-modality cases: they always train, and
        the random split draws val/test only from the cases that hold both volumes (they are scored)."""
        from ..data.cases import find_cases, is_paired, make_split, read_split, write_split

        d = self.cfg["data"]
        saved = self.run_dir / "split.json"
        if resume and saved.exists():
            return read_split(saved, d["root"])
        if d["split"]:
            split = read_split(d["split"], d["root"])
        else:
            folders = find_cases(d["root"], partial=unpaired)
            paired = [f for f in folders if is_paired(f)]
            names = (make_split(paired, d["val_fraction"], d["test_fraction"], d["split_seed"]) if paired
                     else {"train": [], "val": [], "test": []})
            names["train"] = sorted(names["train"] + [f.name for f in folders if f not in paired])
            split = {k: [Path(d["root"]) / n for n in v] for k, v in names.items()}
        if self.rank == 0:
            write_split(split, saved)
        return split

    def _data(self, folders, model):
        from ..data.cases import SliceDataset, UnpairedSliceDataset

        d, m = self.cfg["data"], self.cfg["model"]
        kw = dict(image_size=m["image_size"], context=m["context"], cache_dir=self.cache_dir, register=d["register"])
        if model.unpaired:
            return UnpairedSliceDataset.from_folders(folders, disjoint_cases=d["disjoint_cases"], **kw)
        if d["disjoint_cases"]:
            raise InputError(f"data.disjoint_cases applies to unpaired training, but {model.method!r} here trains on "
                             "registered pairs.", "drop --disjoint-cases (or train an unpaired method).")
        from ..data.cases import is_paired

        single = [Path(f).name for f in folders if not is_paired(f)]
        if single:
            raise InputError(f"method {model.method!r} trains on registered MR/CT pairs, but training case(s) "
                             f"{', '.join(single)} hold only one of the two.",
                             "remove them from the split, or train an unpaired method (syndiff, cyclegan).")
        return SliceDataset.from_folders(folders, **kw)

    # ------------------------------------------------------------------ checkpoints
    def _fingerprint(self) -> dict:
        return {k: _get(self.cfg, k) for k in RESUME_KEYS}

    def _training_record(self, state, seconds: float) -> dict:
        tail = {k: float(sum(v[-100:]) / len(v[-100:])) for k, v in state.history.items() if v}
        return {"config": self.cfg, "fingerprint": self._fingerprint(), "step": state.step,
                "total_steps": self.total_steps, "slices": self.slices, "unpaired": self.unpaired,
                "cases": {k: [Path(c).name for c in v] for k, v in self.split.items()},
                "final_terms_mean_last_100": tail, "final_loss_mean_last_100": tail.get("loss"),
                "best_val": self.best, "seconds": seconds, "world_size": self.world,
                "plateau": self.plateau.state() if self.plateau else None, "stopped_early": self.stopped_early,
                "command": self.command or " ".join(sys.argv)}

    def _save(self, path: Path, model, state, ema, with_state: bool, record: dict) -> None:
        from ..models.methods import save_model

        extra = None
        rec = dict(record)
        if with_state:
            extra, doc = _state_tensors(state)
            rec["resume"] = doc
        save_model(model, path, training=rec, ema={n: e.shadow for n, e in ema.items()}, extra=extra)

    def _load_resume(self, model) -> dict | None:
        from ..models.checkpoint import STATE_PREFIX, load_checkpoint

        last = self.run_dir / "last.safetensors"
        if not last.exists():
            raise InputError(f"--resume: there is no checkpoint {last} to continue from.",
                             "start the run without --resume, or point --run-dir at the folder of the interrupted run.")
        ck = load_checkpoint(last)
        rec = ck.metadata.get("training", {})
        if "resume" not in rec:
            raise InputError(f"{last} holds no optimiser state, so the run cannot continue exactly.",
                             "start a new run (inference checkpoints like model.safetensors cannot be resumed).")
        old, new = rec.get("fingerprint", {}), self._fingerprint()
        diff = [k for k in RESUME_KEYS if json.dumps(old.get(k), sort_keys=True) != json.dumps(new.get(k), sort_keys=True)]
        if diff:
            raise InputError(f"--resume: the config differs from the interrupted run's in {', '.join(diff)}.",
                             f"use the run's own config ({self.run_dir / 'config.yaml'}), or start a new --run-dir.")
        if rec.get("stopped_early") and self.cfg["train"]["early_stop"]["enabled"]:
            raise InputError(f"--resume: the run already stopped on a loss plateau at step {rec['stopped_early']['step']} "
                             f"(Lyu & Wang's rule, train.early_stop).",
                             "use its model.safetensors, or train on with --set train.early_stop.enabled=false.")
        self.best = rec.get("best_val")
        return {"networks": {n: ck.tensors[n] for n in model.networks},
                "ema": {n: ck.tensors[f"ema.{n}"] for n in model.inference_networks if f"ema.{n}" in ck.tensors},
                "tensors": ck.tensors.get(STATE_PREFIX, {}), "doc": rec["resume"], "plateau": rec.get("plateau")}

    # ------------------------------------------------------------------ validation
    def _validate(self, model, ema) -> dict:
        from ..io.intensity import model_to_hu

        if self.val_data is None:
            return {}
        mr, ct = self.val_data
        nets = dict(model.networks)
        nets.update({n: e.shadow for n, e in ema.items()})
        eval_model = type(model)(nets, model.metadata)
        t = self.cfg["train"]
        if hasattr(eval_model, "process"):
            sampler = eval_model.make_sampler(t["val_sampler"], t["val_steps"])
        else:
            sampler = eval_model.make_sampler(t["val_sampler"])
        gen = torch.Generator().manual_seed(int(t["seed"]))
        raw = [model.networks[n] for n in model.inference_networks if n not in ema]  # no EMA: sample the raw weights
        for net in raw:
            net.eval()
        try:
            with torch.no_grad():
                x = eval_model.sample(mr.to(self.device), sampler, generator=gen).x0.float().cpu()
        finally:
            for net in raw:
                net.train()
        err = model_to_hu(x.numpy()) - model_to_hu(ct.numpy())
        mse = float((err ** 2).mean())
        return {"mae_hu": float(abs(err).mean()), "me_hu": float(err.mean()),
                "psnr_db": float(10 * math.log10(4095.0 ** 2 / max(mse, 1e-12)))}

    def _plateau_value(self, out: dict) -> float:
        """The loss term the early-stop rule watches, averaged over processes (``loss`` already is)."""
        term = self.cfg["train"]["early_stop"]["term"]
        if term not in out:
            raise InputError(f"train.early_stop.term {term!r} is not a loss term of {self.cfg['method']!r}.",
                             f"use one of: {', '.join(sorted(k for k in out if k != 'lr'))}.")
        value = float(out[term])
        dist = _dist()
        if dist and term != "loss":
            t = torch.tensor([value], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            value = t.item() / self.world
        return value

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False, progress: bool = True) -> Path:
        from ..io.atomic import atomic_write
        from ..models.methods import create_model

        import yaml

        dist = _dist()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
        cfg, t, o, m, d = self.cfg, self.cfg["train"], self.cfg["optim"], self.cfg["model"], self.cfg["data"]
        self.device = resolve_device(t["device"], int(os.environ.get("LOCAL_RANK", 0)))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir = None
        if d["cache"]:
            self.cache_dir = Path(d["cache_dir"]) if d["cache_dir"] else Path(os.environ.get(
                "MRTOCT_CACHE", Path.home() / ".cache" / "mrtoct")) / "slices"
        self.best, self.stopped_early = None, None
        torch.manual_seed(int(t["seed"]))  # same initial weights on every process
        options = dict(m["options"] or {})
        if cfg["method"] in ("ddpm", "score_sde"):
            options.setdefault("prediction", m["prediction"])
        model = create_model(cfg["method"], m["image_size"], m["context"], unet=m["unet"], process=m["process"],
                             options=options or None)
        self.split = self._split(resume, bool(model.unpaired))
        if not self.split["train"]:
            raise InputError("the split has no training cases.", "add cases to 'train' or lower val/test fractions.")
        data = self._data(self.split["train"], model)
        self.n_slices = len(data)
        self.unpaired = bool(model.unpaired)
        self.slices = {"mr": len(data.mr), "ct": len(data.ct)}
        per_step = int(t["batch_size"]) * self.world
        self.total_steps = int(t["steps"] or math.ceil(float(t["epochs"]) * self.n_slices / per_step))
        self.val_data = None
        if self.split["val"] and t["val_every"] and t["val_cases"] and self.rank == 0:
            from ..data.cases import SliceDataset

            vd = SliceDataset.from_folders(self.split["val"][: int(t["val_cases"])], m["image_size"], m["context"],
                                           cache_dir=self.cache_dir, register=d["register"])
            idx = torch.linspace(0, len(vd) - 1, min(int(t["val_slices"]), len(vd))).round().long()
            self.val_data = (vd.mr[idx], vd.ct[idx])
        resume_state = self._load_resume(model) if resume else None
        start = int(resume_state["doc"]["step"]) if resume_state else 0
        es = t["early_stop"]
        self.plateau = LossPlateau(math.ceil(self.n_slices / per_step), es["min_epochs"], es["window"],
                                   es["min_decrease"], (resume_state or {}).get("plateau")) if es["enabled"] else None
        if start >= self.total_steps:
            raise InputError(f"--resume: the run already finished ({start} of {self.total_steps} steps).",
                             "raise train.steps (e.g. --steps N) to train further, or use the run's model.safetensors.")
        if self.rank == 0:
            with atomic_write(self.run_dir / "config.yaml", suffix=".yaml") as tmp:
                tmp.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        logger = _Logger(self.run_dir, start, self.rank == 0)
        amp = (t["amp"] is True) or (t["amp"] == "auto" and self.device.type == "cuda")
        what = (f"{len(data.mr)} MR and {len(data.ct)} CT slices drawn independently (unpaired)" if model.unpaired
                else f"{self.n_slices} paired slices")
        if self.rank == 0:
            print(f"training {cfg['method']} on {what} from {len(self.split['train'])} case(s) "
                  f"({len(self.split['val'])} val, {len(self.split['test'])} test), {self.total_steps} steps of "
                  f"{t['batch_size']} x {self.world} process(es) on {self.device}"
                  + (f", resuming at step {start}" if start else "") + f"; run folder {self.run_dir}", flush=True)
        t_start = time.perf_counter()
        last_print = [time.perf_counter(), start]
        final_path = self.run_dir / "model.safetensors"

        def callback(step, out, state, ema):
            stop = bool(self.plateau and self.plateau.add(step, self._plateau_value(out)))  # same on every process
            if stop:
                pl = self.plateau
                self.stopped_early = {"step": step, "epoch": len(pl.epochs), "epoch_loss": pl.epochs[-1],
                                      "reference": pl.reference}
            if self.rank != 0:
                return stop
            if stop and progress:
                print(f"stopping at step {step} (epoch {len(pl.epochs)}): its mean loss {pl.epochs[-1]:.5f} is not "
                      f"{pl.min_decrease:.0%} below the mean of the previous {pl.window} epochs "
                      f"({pl.reference:.5f}; Lyu & Wang Sec. IV, train.early_stop)", file=sys.stderr, flush=True)
            final = step == self.total_steps or stop
            if step % t["log_every"] == 0 or final or time.perf_counter() - last_print[0] > 30:
                now = time.perf_counter()
                rate = (now - last_print[0]) / max(1, step - last_print[1])
                last_print[:] = [now, step]
                logger.log(step, {**out, "s_per_step": rate})
                if progress:
                    eta = rate * (self.total_steps - step)
                    print(f"PROGRESS {step / self.total_steps:.4f} step {step}/{self.total_steps} loss {out['loss']:.4f} "
                          f"lr {out['lr']:.2e} {rate:.3f} s/step ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:"
                          f"{int(eta % 60):02d}", file=sys.stderr, flush=True)
            if self.val_data is not None and (step % t["val_every"] == 0 or final):
                val = self._validate(model, ema)
                logger.log(step, val, "val")
                if progress:
                    print(f"validation at step {step}: PSNR {val['psnr_db']:.2f} dB, MAE {val['mae_hu']:.1f} HU",
                          file=sys.stderr, flush=True)
                if self.best is None or val["psnr_db"] > self.best["psnr_db"]:
                    self.best = {**val, "step": step}
                    record = self._training_record(state, time.perf_counter() - t_start)
                    self._save(self.run_dir / "best.safetensors", model, state, ema, False, record)
            if step % t["checkpoint_every"] == 0 or final:
                record = self._training_record(state, time.perf_counter() - t_start)
                self._save(self.run_dir / "last.safetensors", model, state, ema, True, record)
            if final:  # the final EMA model for synthesis: the same state, without the optimiser moments
                for path in [final_path] + ([self.out] if self.out else []):
                    self._save(path, model, state, ema, False, record)
                print(f"saved {final_path}" + (f" and {self.out}" if self.out else "")
                      + f" (final loss {record['final_loss_mean_last_100']:.4f}"
                      + (f", best validation PSNR {self.best['psnr_db']:.2f} dB at step {self.best['step']}"
                         if self.best else "") + ")", flush=True)
            return stop

        try:
            train_loop(model, data, steps=self.total_steps, batch_size=int(t["batch_size"]), lr=o["lr"],
                       betas=o["betas"], eps=float(o["eps"]), ema_decay=float(t["ema_decay"]), seed=int(t["seed"]),
                       grad_clip=float(o["grad_clip"]), warmup_steps=int(o["warmup_steps"]), decay=o["decay"],
                       decay_start=float(o["decay_start"]), device=self.device, amp=amp, callback=callback,
                       resume=resume_state)
        finally:
            logger.close()
        if dist:
            dist.barrier()
        return self.out or final_path


def init_distributed() -> bool:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1); NCCL on CUDA, gloo on CPU."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return True
