"""Shared machinery of the reverse-diffusion samplers.

A sampler is a small configuration object (process, number of steps, x0 clipping, time spacing) with

* a generic loop in :meth:`Sampler.sample` that builds the time grid, calls the network, turns its
  noise prediction into an ``x0`` prediction, clips it, lets an ``x0_hook`` replace it, draws the
  random numbers, counts network evaluations and handles progress and cancellation; and
* a pure :meth:`Sampler.step` per subclass: the update ``x_t -> x_s`` between two grid times as a
  function of its inputs only (the noise is drawn by the loop and passed in; no hidden RNG, no
  mutation of the sampler).

Conventions shared by every sampler
-----------------------------------
``model_fn(x_t, t) -> eps``
    ``x_t`` is ``[B, ...]`` (normally ``[B, C, H, W]``), ``t`` a ``[B]`` tensor of *continuous* times in
    ``[0, 1]`` (float32, or float64 when ``x_t`` is float64) on ``x_t``'s device. It returns the noise
    prediction with ``x_t``'s shape. The caller binds the MR condition and maps ``t`` to the network's
    input with ``process.noise_condition(t)`` (``1000 t``).
``x0_hook(x0, x_t, t) -> x0``
    Called after every network evaluation with the (clipped) ``x0`` prediction, the current ``x_t``
    and ``t`` as given to ``model_fn``. What it returns is used verbatim (not clipped again) as the
    ``x0`` of the update, and the update's noise/score is recomputed from it
    (``eps = process.eps_from_x0(x_t, x0, t)``), so the hook really steers the trajectory. This is
    where DDMM-Synth's null-space projection (DDMM-Synth Eq. 5) plugs in.
Noise-composing hooks (DDMM-Synth Eqs. 10-13)
    A hook whose ``x0`` carries noise of its own (measurement noise brought in by ``A+ y``) may also
    define ``compose_noise(x0, x_t, t, step) -> (x0, extra_variance)``. Samplers whose step is a
    Gaussian posterior draw ``x_s = (terms in x_t) + c0 * x0 + sqrt(v) z`` describe it with
    :meth:`Sampler.step_noise` (a :class:`StepNoise` with ``c0`` and ``v``: :class:`~.ddpm.DDPMSampler`
    and :class:`~.ddim.DDIMSampler` with ``eta > 0``); for those the loop calls ``compose_noise``
    instead of ``__call__``, and the step then injects ``extra_variance`` of fresh noise instead of
    ``v`` (the hook keeps the total at ``v``: the part its ``x0`` brings, ``c0^2`` times its noise
    variance, plus the extra). With any other sampler, or without ``compose_noise``, the hook is called
    as ``x0_hook(x0, x_t, t)`` and the sampler adds its usual noise: nothing changes for plain hooks.
:class:`SampleResult`
    ``x0``: the final denoised sample, i.e. the (clipped, hooked) ``x0`` prediction of the last
    network evaluation -- the usual "denoise at the end" (for VP the last posterior step lands on
    ``sigma = 0`` where the step's output equals this ``x0`` exactly, e.g. Lyu & Wang Table I with
    ``z = 0`` at ``i = 1``). ``nfe``: the number of network evaluations actually made.
    ``trajectory_info``: a dict of plain values (sampler name, time grid, spacing...).
Time grid
    ``steps + 1`` decreasing times ``1 = t_0 > ... > t_N = t_min`` from ``process.timesteps``; step
    ``i`` evaluates the network at ``t_i`` and moves to ``t_{i+1}``, so the network is never called at
    ``t_min`` (where VP has ``sigma = 0``).
Device
    Everything stays on ``x_T``'s (or ``device``'s) device; the per-step loop has no host syncs.
    Schedule coefficients are computed in float64 (float32 on ``mps``) and cast to the image dtype.
Autograd
    Sampling runs under ``torch.no_grad()``; a hook that needs gradients can enable them locally.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from ...checks import check_int
from ...errors import CancelledError, InputError
from ..diffusion.process import T_SPACINGS, DiffusionProcess, work_dtype

__all__ = [
    "Sampler",
    "SampleResult",
    "Prediction",
    "StepNoise",
    "SamplingRun",
    "ModelFn",
    "X0Hook",
    "SAMPLER_OPTION",
    "MAX_STEPS",
    "max_steps",
]

#: how :func:`...checks.check_real` / :func:`...checks.check_int` name a sampler's settings in their messages
SAMPLER_OPTION = "sampler option"
#: The most steps a sampler may take: the documented cap for samplers whose steps are points of a continuous time
#: grid (em, pc, ode, dpmpp, and ddpm/ddim on a VE process). The papers use at most 1000-2000; 10 000 steps of the
#: tiny demo UNet on one 64x64 slice already take minutes on a CPU. Discrete samplers on a VP (DDPM) process
#: (``discrete_steps = True``: ddpm, ddim) take at most T steps, one per trained timestep.
MAX_STEPS = 10_000

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
X0Hook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int, torch.Tensor], Any]
CancelFn = Callable[[], bool]


@dataclass
class SampleResult:
    """Output of :meth:`Sampler.sample`.

    ``x0``: final denoised sample (shape of the prior sample). ``nfe``: network evaluations made.
    ``trajectory_info``: plain-python details of the run (sampler, grid, solver statistics).
    """

    x0: torch.Tensor
    nfe: int
    trajectory_info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Prediction:
    """One network evaluation turned into a consistent pair: ``x_t = alpha x0 + sigma eps``.

    ``x0`` is the clipped / hooked data prediction; ``eps`` the noise that goes with it (the model's
    own output when neither clipping nor a hook is active). ``noise_variance``: set only by a
    noise-composing hook (see the module docstring): the variance of the fresh noise the step must add
    instead of its own (a 0-d or ``[B]`` tensor); ``None`` means "the sampler's usual amount".
    """

    x0: torch.Tensor
    eps: torch.Tensor
    noise_variance: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class StepNoise:
    """A stochastic posterior step ``t -> s``: ``x_s = (terms in x_t) + x0_coef * x0 + sqrt(variance) z``.

    ``x0_coef`` is the coefficient of the (hooked) ``x0`` in the step's mean, once ``eps`` is written
    in terms of ``x0`` (DDPM: ``c_0`` of :func:`~.ddpm.posterior_coefficients`, DDMM-Synth Eq. 9's
    ``sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)``); ``variance`` is the variance of the fresh
    Gaussian noise the step adds (0 on a step without noise). 0-d tensors in the schedule dtype.
    """

    t: torch.Tensor
    s: torch.Tensor
    x0_coef: torch.Tensor
    variance: torch.Tensor


def max_steps(sampler_cls: type, process: DiffusionProcess) -> int:
    """The most steps ``sampler_cls`` may take on ``process``: T for a discrete sampler on a T-step VP chain,
    otherwise :data:`MAX_STEPS`."""
    T = getattr(process, "T", None)
    if getattr(sampler_cls, "discrete_steps", False) and getattr(process, "kind", None) == "vp" and isinstance(T, int):
        return min(T, MAX_STEPS)
    return MAX_STEPS


class SamplingRun:
    """Per-call state of one :meth:`Sampler.sample` run: model, hook, RNG, NFE counter, callbacks.

    Samplers call :meth:`predict` for every network evaluation and :meth:`randn_like` for every
    random draw, so the NFE count, the clipping/hook order and the RNG stream are the same for all.
    """

    def __init__(self, sampler: "Sampler", model_fn: ModelFn, x0_hook: Optional[X0Hook],
                 generator: Optional[torch.Generator], callback: Optional[ProgressFn],
                 cancel: Optional[CancelFn], batch: int):
        self.sampler = sampler
        self.process = sampler.process
        self.model_fn = model_fn
        self.x0_hook = x0_hook
        self.generator = generator
        self.callback = callback
        self.cancel = cancel
        self.batch = batch
        self.nfe = 0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise CancelledError(f"{self.sampler.name} sampling cancelled after {self.nfe} network evaluations")

    def progress(self, i: int, n: int, x: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(i, n, x)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def predict(self, x: torch.Tensor, t: torch.Tensor, step_noise: Optional[StepNoise] = None) -> Prediction:
        """Evaluate the network at ``(x, t)`` (``t`` a 0-d or ``[B]`` time tensor) -> :class:`Prediction`.

        Order: ``eps = model_fn(x, t)``; ``x0 = process.x0_from_eps``; clip to ``clip_range`` if
        enabled; ``x0 = x0_hook(x0, x, t)`` if given; if either changed ``x0``, recompute ``eps`` from it.
        With ``step_noise`` (the coming step's :class:`StepNoise`) and a hook that has
        ``compose_noise``, that is called instead and its extra variance goes into the prediction.
        """
        proc = self.process
        s = self.sampler
        t_vec = t.reshape(-1).expand(self.batch) if t.dim() == 0 else t
        t_model = t_vec.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        eps = self.model_fn(x, t_model)
        self.nfe += 1
        if not isinstance(eps, torch.Tensor) or eps.shape != x.shape:
            got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
            raise ValueError(f"model_fn must return a tensor shaped like x_t {tuple(x.shape)}, got {got}")
        eps = eps.to(x.dtype)
        x0 = proc.x0_from_eps(x, eps, t)
        changed = False
        extra = None
        if s.clip_x0:
            x0 = x0.clamp(s.clip_range[0], s.clip_range[1])
            changed = True
        if self.x0_hook is not None:
            compose = getattr(self.x0_hook, "compose_noise", None) if step_noise is not None else None
            if compose is not None:
                x0, extra = compose(x0, x, t_model, step_noise)
                extra = self._check_extra_variance(extra, x)
            else:
                x0 = self.x0_hook(x0, x, t_model)
            if not isinstance(x0, torch.Tensor) or x0.shape != x.shape:
                raise ValueError("x0_hook must return a tensor shaped like x_t")
            x0 = x0.to(x.dtype)
            changed = True
        if changed:
            eps = proc.eps_from_x0(x, x0, t)
        return Prediction(x0=x0, eps=eps, noise_variance=extra)

    def _check_extra_variance(self, extra: Any, x: torch.Tensor) -> torch.Tensor:
        extra = torch.as_tensor(extra, device=x.device)
        if not extra.is_floating_point() or extra.dim() > 1 or (extra.dim() == 1 and extra.shape[0] != x.shape[0]):
            raise ValueError("compose_noise must return an extra noise variance that is a number or a [B] tensor")
        return extra.clamp_min(0.0)


class Sampler:
    """Base class of all samplers.

    Parameters
    ----------
    process: the :class:`~MRtoCTSynthesisLib.models.diffusion.DiffusionProcess` the network was trained with.
    steps: number of steps of the time grid (``>= 1``); see the subclass for its exact meaning.
    clip_x0: clamp every ``x0`` prediction to ``clip_range`` (data are scaled to ``[-1, 1]``).
    clip_range: ``(low, high)`` for the clamp.
    t_spacing: ``"uniform"``, ``"logsnr"`` or ``"quadratic"`` (``None``: the sampler's default).
    """

    name: str = "base"
    #: default time spacing of this sampler
    default_spacing: str = "uniform"
    #: network evaluations per grid step
    nfe_per_step: int = 1
    #: True when the same x_T always gives the same sample
    deterministic: bool = False
    #: True when a step moves between trained timesteps of a discrete (VP, T-step) chain: at most T steps
    discrete_steps: bool = False

    def __init__(self, process: DiffusionProcess, steps: int, clip_x0: bool = True,
                 clip_range: Sequence[float] = (-1.0, 1.0), t_spacing: Optional[str] = None):
        if not isinstance(process, DiffusionProcess):
            raise TypeError(f"process must be a DiffusionProcess, got {type(process).__name__}")
        self.process = process
        self.steps = check_int(steps, "steps", what=SAMPLER_OPTION, fix="pass the number of sampling steps, e.g. 50")
        limit = max_steps(type(self), process)
        if self.steps > limit:
            T = getattr(process, "T", None)
            if limit != MAX_STEPS and T is not None:
                raise InputError(f"{self.steps} sampling steps is more than the T = {T} diffusion steps this model was "
                                 f"trained with; the {self.name} sampler takes at most one step per trained timestep",
                                 f"use --steps between 1 and {T} (e.g. 100 for ddim), or leave --steps out")
            raise InputError(f"{self.steps} sampling steps is more than the {MAX_STEPS} the {self.name} sampler allows",
                             f"use --steps between 1 and {MAX_STEPS} (the papers use at most 2000), or leave "
                             "--steps out")
        if not isinstance(clip_x0, bool):
            raise InputError(f"sampler option 'clip_x0' must be true or false, got {clip_x0!r}")
        self.clip_x0 = clip_x0
        try:
            lo, hi = (float(v) for v in clip_range)
        except (TypeError, ValueError):
            raise InputError(f"sampler option 'clip_range' must be two numbers (low, high), got {clip_range!r}",
                             "use e.g. (-1, 1)") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise InputError(f"sampler option 'clip_range' must satisfy low < high, got {clip_range!r}",
                             "use e.g. (-1, 1)")
        self.clip_range = (lo, hi)
        spacing = self.default_spacing if t_spacing is None else t_spacing
        if spacing not in T_SPACINGS:
            raise InputError(f"unknown time spacing {t_spacing!r}", f"use one of {list(T_SPACINGS)}")
        self.t_spacing = spacing

    # ---- hooks for subclasses ----------------------------------------------------------------
    def timesteps(self) -> torch.Tensor:
        """The CPU float64 time grid (``steps + 1`` values from 1 to ``t_min``)."""
        return self.process.timesteps(self.steps, self.t_spacing, device="cpu")

    def needs_noise(self, i: int, n: int) -> bool:
        """Whether step ``i`` of ``n`` consumes a standard-normal draw (never the last step)."""
        return False

    def step_noise(self, i: int, n: int, t: torch.Tensor, s: torch.Tensor) -> Optional[StepNoise]:
        """The :class:`StepNoise` of step ``i`` (``t -> s``) for noise-composing hooks, or ``None``
        when the step is not a Gaussian posterior draw (the default; see the module docstring)."""
        return None

    def init_state(self) -> Any:
        """Multistep history carried between steps (``None`` for one-step samplers)."""
        return None

    def before_prediction(self, run: SamplingRun, i: int, n: int, x: torch.Tensor,
                          t: torch.Tensor) -> torch.Tensor:
        """Work done at time ``t`` before the step's own network call (the PC corrector)."""
        return x

    def step(self, i: int, n: int, x_t: torch.Tensor, pred: Prediction, t: torch.Tensor,
             s: torch.Tensor, noise: Optional[torch.Tensor], state: Any) -> tuple[torch.Tensor, Any]:
        """Pure update ``x_t -> x_s`` (``s < t`` are 0-d time tensors) -> ``(x_s, new_state)``."""
        raise NotImplementedError

    # ---- the generic loop --------------------------------------------------------------------
    def sample(self, model_fn: ModelFn, shape: Optional[Sequence[int]] = None,
               generator: Optional[torch.Generator] = None, x_T: Optional[torch.Tensor] = None,
               x0_hook: Optional[X0Hook] = None, callback: Optional[ProgressFn] = None,
               cancel: Optional[CancelFn] = None, device: torch.device | str | None = None,
               dtype: Optional[torch.dtype] = None) -> SampleResult:
        """Draw samples by integrating the reverse process from ``t = 1`` to ``t_min``.

        ``shape``: ``[B, C, H, W]`` (may be omitted when ``x_T`` is given). ``generator``: the only
        source of randomness (prior draw when ``x_T`` is None, and every noise draw of stochastic
        samplers); it must live on the sampling device. ``x_T``: start from this prior sample instead of
        drawing one. ``x0_hook``/``model_fn``: see the module docstring. ``callback(i, n, x)``: after
        each step ``i = 1..n`` with the current state ``x`` (the ODE sampler reports
        ``i`` out of ``n = 1000`` as the fraction of the time interval done). ``cancel()``: polled
        before each step; returning True raises :class:`~MRtoCTSynthesisLib.errors.CancelledError`.
        ``device``/``dtype``: where and in which precision to sample (default: ``x_T``'s, else CPU
        float32).
        """
        x = self._initial_x(shape, generator, x_T, device, dtype)
        run = SamplingRun(self, model_fn, x0_hook, generator, callback, cancel, batch=x.shape[0])
        with torch.no_grad():
            return self._run(run, x)

    def _initial_x(self, shape, generator, x_T, device, dtype) -> torch.Tensor:
        if x_T is not None:
            if not isinstance(x_T, torch.Tensor):
                raise TypeError("x_T must be a tensor")
            if shape is not None and tuple(shape) != tuple(x_T.shape):
                raise InputError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was requested",
                                 "pass matching shape and x_T, or leave shape out")
            x = x_T.to(device=device or x_T.device, dtype=dtype or x_T.dtype)
        else:
            if shape is None:
                raise InputError("sample() needs the image shape or a starting x_T",
                                 "pass shape=(batch, channels, height, width)")
            shape = tuple(int(v) for v in shape)
            if len(shape) < 1 or any(v < 1 for v in shape):
                raise InputError(f"invalid sample shape {shape}", "use positive sizes, e.g. (1, 1, 256, 256)")
            dev = torch.device(device) if device is not None else torch.device("cpu")
            self._check_generator(generator, dev)
            x = self.process.prior_sample(shape, generator=generator, device=dev, dtype=dtype or torch.float32)
        if not x.is_floating_point():
            raise InputError(f"samples must be floating point, got {x.dtype}", "use dtype=torch.float32")
        self._check_generator(generator, x.device)
        return x

    @staticmethod
    def _check_generator(generator: Optional[torch.Generator], device: torch.device) -> None:
        if generator is not None and torch.device(generator.device).type != torch.device(device).type:
            raise InputError(
                f"the random generator lives on {generator.device} but sampling runs on {device}",
                f"create it with torch.Generator(device='{device}')",
            )

    # ---- configuration ------------------------------------------------------------------------
    @classmethod
    def option_names(cls) -> list[str]:
        """The keyword options of this class's constructor chain (besides ``process`` and ``steps``), base first
        ... subclass last; each is stored on the sampler under its own name."""
        opts: list[str] = []
        for klass in reversed(cls.__mro__):
            if klass is object or "__init__" not in vars(klass):
                continue
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.name in ("self", "process", "steps") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    continue
                if p.name not in opts:
                    opts.append(p.name)
        return opts

    def to_config(self) -> dict:
        """Every constructor argument as plain JSON values: ``name``, ``steps``, ``process`` (the process's
        config), then each keyword option of the class (``clip_x0``, ``clip_range``, ``t_spacing`` and the
        subclass's own, e.g. ``eta``, ``snr``, ``corrector_steps``, ``predictor``, ``rtol``, ``atol``, ``order``),
        resolved: an option left at ``None`` (``t_spacing``, the ODE's ``t_end``) is recorded with the value it
        took. :meth:`from_config` (through :func:`~.make_sampler`) builds an equal sampler from it.
        """
        config: dict = {"name": self.name, "steps": self.steps, "process": self.process.to_config()}
        for option in self.option_names():
            value = getattr(self, option)
            config[option] = list(value) if isinstance(value, tuple) else value
        return config

    @classmethod
    def from_config(cls, config: dict, process: DiffusionProcess | dict | None = None) -> "Sampler":
        """The sampler a :meth:`to_config` dict describes, built and validated by :func:`~.make_sampler`.

        ``process`` replaces the config's ``process`` (e.g. the loaded model's own). Called on a subclass, the
        config's ``name`` must be that subclass's.
        """
        # the registry (and make_sampler) live in the package __init__, which imports this module: import at call time
        from . import make_sampler

        if not isinstance(config, dict) or "name" not in config or "steps" not in config:
            raise InputError(f"a sampler config must be a mapping with 'name' and 'steps', got {config!r}",
                             "use the dict Sampler.to_config() wrote (the 'sampler_config' of a run's info JSON)")
        options = {k: v for k, v in config.items() if k not in ("name", "steps", "process")}
        if process is None:
            if "process" not in config:
                raise InputError("the sampler config has no 'process' and none was given",
                                 "pass the model's process, or a config written by Sampler.to_config()")
            process = config["process"]
        sampler = make_sampler(config["name"], process, config["steps"], **options)
        if cls is not Sampler and not isinstance(sampler, cls):
            raise InputError(f"the config describes sampler {config['name']!r}, not {cls.name!r}",
                             f"call Sampler.from_config, or {type(sampler).__name__}.from_config")
        return sampler

    def _info(self, grid_cpu: torch.Tensor) -> dict:
        return {
            "config": self.to_config(),
            "sampler": self.name,
            "process": self.process.to_config(),
            "steps": self.steps,
            "t_spacing": self.t_spacing,
            "timesteps": [float(v) for v in grid_cpu],
            "nfe_per_step": self.nfe_per_step,
            "clip_x0": self.clip_x0,
        }

    def _run(self, run: SamplingRun, x: torch.Tensor) -> SampleResult:
        grid_cpu = self.timesteps()
        grid = grid_cpu.to(device=x.device, dtype=work_dtype(x.device))
        n = grid.shape[0] - 1
        state = self.init_state()
        x0 = x
        for i in range(n):
            run.check_cancel()
            t, s = grid[i], grid[i + 1]
            x = self.before_prediction(run, i, n, x, t)
            plan = self.step_noise(i, n, t, s) if run.x0_hook is not None else None
            pred = run.predict(x, t, plan)
            noise = run.randn_like(x) if self.needs_noise(i, n) else None
            x, state = self.step(i, n, x, pred, t, s, noise, state)
            x0 = pred.x0
            run.progress(i + 1, n, x)
        return SampleResult(x0=x0, nfe=run.nfe, trajectory_info=self._info(grid_cpu))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(process={self.process!r}, steps={self.steps}, "
                f"t_spacing={self.t_spacing!r}, clip_x0={self.clip_x0})")

