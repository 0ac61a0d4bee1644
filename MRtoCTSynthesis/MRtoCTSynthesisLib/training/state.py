"""What a training step runs on: the optimisers and their one update path (:class:`TrainState`), the EMA copies,
the per-step seeds and learning-rate factors, and the optimiser state as tensors for checkpoints."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from ..errors import InputError
from ..models.losses import ImagePool


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


def process_group():
    """torch.distributed when this process is part of an initialised process group (torchrun), else None."""
    return dist if dist.is_available() and dist.is_initialized() else None


def state_tensors(state) -> tuple[dict[str, torch.Tensor], dict]:
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
    return tensors, {"param_groups": groups, "step": state.step,
                     "pools": {k: len(v.images) for k, v in state.pools.items()},
                     "pool_sizes": {k: v.size for k, v in state.pools.items()}}


def restore_state(state, tensors: dict[str, torch.Tensor], doc: dict) -> None:
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
