"""The one synthesis call: MRI volume -> sCT volume in HU + Monte-Carlo std volume in HU.

:func:`synthesize` is what every front end calls: the CLI's ``synthesize`` (which the Slicer module runs),
the demo, the batch evaluation and the benchmarks. With ``measurements`` (a :class:`.measurements.
MeasurementSpec` or prebuilt :class:`~..models.methods.ddmm_synth.Measurements`) it runs DDMM-Synth: the
conditional DDPM prior with every ``x0`` pinned to each slice's sparse-view CT measurements by N-SMI
(DDMM-Synth Eqs. 5 and 7-13). The path of one call:

1. normalise the MRI per volume (:class:`~.intensity.MRNormalization`);
2. reorient to canonical axial order and put each slice on the model grid (:mod:`.slicing`): for a checkpoint
   that records its training pixel size (``conditioning.pixel_spacing_mm``), a canvas of exactly that pixel
   size over the body's bounding box plus a margin (``options.crop_to_body``; the whole field of view
   otherwise), so the network sees anatomy at the scale it learned; for older checkpoints, the square field
   of view resized to ``image_size``;
3. enumerate (slice, sample) items, slice-major, and cut them into batches of ``batch_size`` images, so
   slices x Monte-Carlo samples fill the device together;
4. for each batch, the method's ``sample`` runs the chosen sampler on the device (bf16 autocast on CUDA
   when the model allows it); with measurements, each batch gets the N-SMI hook of its rows' own
   slices (``Measurements.hook_for``), so every Monte-Carlo sample is pinned to its slice's sinogram;
5. stream the samples into per-slice running moments (:class:`~.uncertainty.RunningMoments`), never
   holding all K samples of the volume;
6. map mean and std back to the input grid and to HU: the outputs have exactly the MRI's geometry; the std is the
   unbiased sample std (ddof 1), multiplied by the checkpoint's recalibration when it has one and the run uses the
   sampler it was fitted with (:func:`.uncertainty.calibration_scale`, reported in ``info["uncertainty"]``);
7. compare the MRI with the checkpoint's training record (:mod:`.input_check`: intensity histogram, body size, the
   pixel size the network sees, slice spacing and, for K > 1, the mean MC std) and report it in
   ``info["input_check"]`` (``in_distribution``, ``score``, ``reasons``).

GPU options (all off by default; the default path is unchanged and bit-identical on CPU):
``channels_last`` stores the networks' weights (and the condition batch) in NHWC order, which cuDNN's
convolutions prefer under bf16/fp16 autocast; ``compile`` wraps each network's ``forward`` in
``torch.compile`` (``compile_mode="reduce-overhead"`` adds CUDA graphs of the fixed-shape network call;
the sampler arithmetic between calls stays eager). Both may change results in the last bits (other
kernels). ``torch.compile`` needs a C++ compiler on CPU and Triton on CUDA; without them it is refused
with an :class:`InputError`. The per-step sampling loop itself has no host synchronisation: the time
grid and schedule tables live on the device (:mod:`.samplers.base`, :mod:`.diffusion.process`).

CPU option (off by default): ``backend="onnx"`` runs a diffusion model's denoiser through ONNX Runtime instead of
eager torch (:mod:`..models.onnx_backend`: exported once per checkpoint into the user cache, checked against torch
to 1e-4); the sampler, noise and moments stay in torch, so the sCT differs by float rounding only.

Reproducibility: one ``torch.Generator`` seeded with ``seed`` drives all noise, consumed batch by batch, so
the same seed, inputs, batch size and device give the same sCT. On CUDA, cuDNN/cuBLAS kernels may differ
in the last bits between runs and GPUs; on CPU the result is bit-identical. A CUDA out-of-memory error
halves the batch and retries (with a message), which changes the noise order and therefore the sample.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..devices import PRECISIONS, autocast, resolve_device
from ..errors import CancelledError, InputError
from ..io.intensity import MRNormalization, model_std_to_hu, model_to_hu
from ..io.memory import available_memory_bytes, format_bytes
from ..io.slicing import (
    canonical_layout,
    foreground_box_mm,
    from_canonical,
    from_model_grid,
    from_physical_grid,
    plan_physical_grid,
    to_canonical,
    to_model_grid,
    to_physical_grid,
)
from ..io.volume import Volume
from ..models.methods.ddmm_synth import NSMI_MODES, DDMMSynth, Measurements, resolve_nsmi
from ..models.onnx_backend import BACKENDS, onnx_denoiser
from ..models.samplers.base import MAX_STEPS
from ..names import COMPILE_MODES
from .input_check import body_mask, check_input, input_features
from .measurements import MeasurementSpec
from .uncertainty import NOT_AN_UNCERTAINTY, RunningMoments, calibration_scale

ProgressFn = Callable[[float, str], None]


#: the most Monte-Carlo samples per slice: the std estimate's relative error is about 1/sqrt(2K), 0.7 % at 10 000
#: (Lyu & Wang and DDMM-Synth use 10-20); memory does not grow with K (moments are streamed), run time does
MAX_SAMPLES = 10_000
#: the most images per network call (the automatic choice is 4-64 on a CPU, 8-256 on a GPU)
MAX_BATCH = 4096


@dataclass
class SynthesisOptions:
    """What to run: sampler/steps (None = the model's defaults), K Monte-Carlo samples, seed, device.

    Bounds (:meth:`validate`, before anything is loaded or allocated): ``samples`` 1 to :data:`MAX_SAMPLES`,
    ``steps`` 1 to :data:`~..models.samplers.base.MAX_STEPS` (and at most the model's T for ddpm/ddim on a
    DDPM model, checked when the sampler is built), ``batch_size`` 1 to :data:`MAX_BATCH`; the batch's estimated
    activation memory must also fit in free memory on a CPU (:func:`check_batch_memory`).
    """

    sampler: Optional[str] = None
    steps: Optional[int] = None
    samples: int = 1
    seed: int = 0
    device: str = "auto"
    batch_size: Optional[int] = None
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    sampler_options: dict = field(default_factory=dict)
    channels_last: bool = False  # NHWC weights and inputs (GPU convolutions under autocast)
    compile: bool = False        # torch.compile each network's forward (lazy: compiled on the first batch)
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs) | max-autotune
    # with measurements: auto (noiseless when sigma = 0; the Wiener-filtered noisy block, or the MRI-only prior when the
    # data carry no information, when sigma > 0) | noiseless (DDMM-Synth Eq. 5) | noisy (Eqs. 7-13, exact A+)
    nsmi: str = "auto"
    crop_to_body: bool = True    # physical-scale models: synthesise only the body's bounding box (+ margin)
    backend: str = "torch"       # torch | onnx: the diffusion denoiser through ONNX Runtime on the CPU (opt-in)

    def validate(self) -> None:
        for name in ("samples", "steps", "batch_size", "seed"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise InputError(f"{name} must be a whole number, got {v!r}.", f"give {name} as an integer.")
        if self.samples < 1:
            raise InputError(f"samples must be >= 1, got {self.samples}.",
                             "use --samples 1 (no uncertainty) or more, e.g. 10.")
        if self.samples > MAX_SAMPLES:
            raise InputError(f"--samples {self.samples} is more than the {MAX_SAMPLES} Monte-Carlo samples per slice "
                             "the engine allows (each sample is a full sampling run of every slice).",
                             f"use --samples between 1 and {MAX_SAMPLES}; 10-20 give a usable uncertainty map.")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}.",
                             "use e.g. --steps 20 for dpmpp or 1000 for ddpm.")
        if self.steps is not None and self.steps > MAX_STEPS:
            raise InputError(f"--steps {self.steps} is more than the {MAX_STEPS} sampling steps the engine allows.",
                             f"use --steps between 1 and {MAX_STEPS} (at most the model's T for ddpm/ddim), or leave "
                             "--steps out for the sampler's default.")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}.",
                             "omit --batch-size to choose automatically.")
        if self.batch_size is not None and self.batch_size > MAX_BATCH:
            raise InputError(f"--batch-size {self.batch_size} is more than the {MAX_BATCH} images per network call the "
                             "engine allows.", "use a smaller --batch-size, or leave it out to choose automatically.")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}.", f"use {', '.join(PRECISIONS)}.")
        if self.nsmi not in NSMI_MODES:
            raise InputError(f"unknown N-SMI mode {self.nsmi!r}.", f"use one of {', '.join(NSMI_MODES)}.")
        if self.compile_mode not in COMPILE_MODES:
            raise InputError(f"unknown compile mode {self.compile_mode!r}.", f"use one of {', '.join(COMPILE_MODES)}.")
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}.", f"use one of {', '.join(BACKENDS)}.")
        if self.backend == "onnx" and (self.compile or self.channels_last or self.precision not in ("auto", "fp32")):
            raise InputError("--backend onnx runs the network in float32 through ONNX Runtime; it cannot be combined "
                             "with --compile, --channels-last or a reduced --precision.",
                             "drop those options, or use --backend torch (the default).")


@dataclass
class SynthesisResult:
    sct: Volume        # mean of the K samples, HU, on the MRI's grid
    std: Volume        # pixel-wise std of the K samples, HU (zeros for K = 1)
    info: dict         # what ran: method, sampler, steps, samples, seed, device, NFE, timings, N-SMI details
    measurements: Optional[Measurements] = None  # the embedded measurements (DDMM-Synth runs only)


def default_batch_size(device: torch.device, image_size: int | tuple[int, int]) -> int:
    """Images per network call: modest on CPU (cache-friendly), large on GPU (fills the device)."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    pixels = h * w
    if device.type == "cuda":
        return max(8, min(256, int(64 * (256 * 256) / pixels)))
    return max(4, min(64, int(16 * (64 * 64) / pixels)))


def activation_bytes_per_image(model, shape: tuple[int, int] | None = None) -> int:
    """A rough upper estimate of the memory one image of ``shape`` (default: the model's square grid) needs in one
    network call (float32 activations: the encoder's skip maps, working tensors at full resolution and the
    attention matrices), from the networks' configs. Used only to refuse a batch that cannot fit
    (:func:`check_batch_memory`)."""
    size = float(np.sqrt(shape[0] * shape[1])) if shape is not None else int(model.image_size)
    total = 0.0
    for net in model.networks.values():
        cfg = getattr(net, "config", None)
        base = int(getattr(cfg, "base_channels", 64) or 64)
        mults = tuple(getattr(cfg, "channel_mults", (1, 2, 4)) or (1,))
        blocks = int(getattr(cfg, "num_res_blocks", 2) or 1)
        heads = int(getattr(cfg, "attention_heads", 0) or 0)
        floats = 4.0 * size * size * base * mults[0]  # working tensors at full resolution
        for level, m in enumerate(mults):
            floats += 2.0 * (blocks + 1) * (size / 2 ** level) ** 2 * base * m
        for level in getattr(cfg, "attention_levels", ()) or ():
            tokens = (size / 2 ** int(level)) ** 2
            floats += 2.0 * tokens * tokens * max(1, heads)
        total += floats
    return int(4 * total)


def check_batch_memory(model, batch: int, n_items: int, device: torch.device, explicit: bool,
                       shape: tuple[int, int] | None = None) -> int:
    """The batch to use for ``n_items`` images: refuse an explicit ``--batch-size`` whose estimated activations do
    not fit in free CPU memory; shrink an automatic one to fit. (On CUDA an out-of-memory error halves the batch
    instead.)"""
    if device.type != "cpu":
        return batch
    free = available_memory_bytes()
    per_image = activation_bytes_per_image(model, shape)
    used = min(batch, n_items)  # a batch never holds more images than there are
    if free is None or per_image <= 0 or used * per_image <= free // 2:
        return batch
    fits = max(1, int(free // 2 // per_image))
    if not explicit:
        return min(batch, fits)
    raise InputError(f"--batch-size {batch} would need about {format_bytes(used * per_image)} of memory for the "
                     f"network's activations (estimate), but only {format_bytes(free)} is available.",
                     f"use --batch-size {fits} or less, or leave --batch-size out to choose automatically.")


def _is_cpu_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text
                                              or "DefaultCPUAllocator" in text)


def check_compile_available(device: torch.device) -> None:
    """Refuse ``torch.compile`` with a clear message where its backend cannot build kernels."""
    if not hasattr(torch, "compile"):
        raise InputError(f"this torch ({torch.__version__}) has no torch.compile.",
                         "drop --compile or install torch >= 2.1.")
    if device.type == "cuda":
        try:
            import triton  # noqa: F401 - only to check that torch.compile can build CUDA kernels
        except ImportError:
            raise InputError("torch.compile on CUDA needs Triton, which is not installed.",
                             "drop --compile, or install the triton package that matches this torch.") from None
    elif device.type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if not any(shutil.which(c) for c in (cxx, "g++", "clang++", "c++")):
            raise InputError("torch.compile on CPU needs a C++ compiler (g++ or clang++), and none was found.",
                             "drop --compile (the default), or install a C++ compiler (e.g. apt-get install g++).")
    else:
        raise InputError(f"torch.compile is not supported here on {device.type}.", "drop --compile.")


def _compiled_forward(net: torch.nn.Module, mode: str):
    """``net.forward`` through ``torch.compile``; with CUDA graphs, each call starts a new graph step
    and its output is cloned, so a sampler may keep the previous step's output (DPM-Solver++ history)."""
    compiled = torch.compile(type(net).forward.__get__(net), mode=None if mode == "default" else mode)
    if mode == "default":
        return compiled
    mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)

    def forward(*args, **kwargs):
        if mark is not None:
            mark()
        out = compiled(*args, **kwargs)
        return out.clone() if isinstance(out, torch.Tensor) else out

    return forward


def prepare_model(model, device: torch.device, options: SynthesisOptions):
    """Move ``model`` to ``device`` and apply the optional ``channels_last`` / ``compile`` settings
    (once per network: a model that was already prepared the same way is left as it is), and pick the
    denoiser's backend: eager torch, or ONNX Runtime (``options.backend == "onnx"``, CPU only, diffusion
    models only; exported once per checkpoint into the user cache, see :mod:`..models.onnx_backend`)."""
    model.to(device)
    _select_backend(model, device, options)
    if options.compile:
        check_compile_available(device)
    for net in model.networks.values():
        if options.channels_last and not getattr(net, "_mrtoct_channels_last", False):
            net.to(memory_format=torch.channels_last)
            net._mrtoct_channels_last = True
        if options.compile and getattr(net, "_mrtoct_compiled", None) != options.compile_mode:
            net.forward = _compiled_forward(net, options.compile_mode)
            net._mrtoct_compiled = options.compile_mode
    return model


def _select_backend(model, device: torch.device, options: SynthesisOptions) -> None:
    torch_net = model.networks.get("denoiser") if hasattr(model, "network") else None
    if options.backend != "onnx":
        if torch_net is not None:
            model.network = torch_net
        return
    if torch_net is None:
        raise InputError(f"--backend onnx runs the denoiser of diffusion models (ddpm, score_sde, ddmm_synth); this "
                         f"is a {model.method!r} model.", "use --backend torch (the default) for this model.")
    if device.type != "cpu":
        raise InputError(f"--backend onnx runs on the CPU only, but the device is {device}.",
                         "use --device cpu with --backend onnx, or --backend torch on a GPU.")
    onnx_net = getattr(model, "_mrtoct_onnx_denoiser", None)
    if onnx_net is None:
        onnx_net = onnx_denoiser(torch_net, model.metadata.get("sha256"), threads=torch.get_num_threads())
        model._mrtoct_onnx_denoiser = onnx_net
    model.network = onnx_net


def _is_compile_failure(exc: BaseException) -> bool:
    mod = type(exc).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor")) or "BackendCompilerFailed" in type(exc).__name__


def synthesize(mri: Volume, model, options: SynthesisOptions | None = None,
               measurements: Union[MeasurementSpec, Measurements, None] = None,
               progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None) -> SynthesisResult:
    """Synthesise a CT for ``mri`` with ``model`` (a loaded method, see :func:`..models.methods.load_model`).

    ``measurements`` (DDMM-Synth): a :class:`.measurements.MeasurementSpec` (reference CT or sinogram file;
    built here on the model's grid and device) or prebuilt ``Measurements``. The model must then be a
    conditional DDPM (or ``ddmm_synth``) checkpoint; ``options.nsmi`` picks the block (``auto``: the exact noiseless
    block without noise, the Wiener-filtered noisy block with noise, or the MRI-only prior when the sinograms do not
    rise above the stated noise; see :func:`..models.methods.ddmm_synth.resolve_nsmi`); with a noisy block and
    ``ddim`` without an ``eta`` option, ``eta = 1``. Notes about
    the choice are issued as warnings and kept in ``info["measurements"]["notes"]``.

    ``progress(fraction, message)`` is called after each batch; ``cancel()`` returning True stops the
    run with :class:`CancelledError` (nothing is returned, so nothing is written).
    """
    options = dataclasses.replace(options or SynthesisOptions())
    options.sampler_options = dict(options.sampler_options)
    options.validate()
    if measurements is None:
        if model.method == "ddmm_synth":
            raise InputError("a ddmm_synth checkpoint needs CT measurements to sample with.",
                             "pass --ct REFERENCE_CT (on the MRI's grid) or --sinogram FILE.")
        return _sample_volume(mri, model, options, progress, cancel, None)

    model = DDMMSynth.from_model(model)
    device = resolve_device(options.device)
    size = square_grid_size(model, mri)
    meas = measurements.build(mri, size, seed=options.seed, device=device) \
        if isinstance(measurements, MeasurementSpec) else measurements
    op = meas.operator
    if op.image_shape != (size, size):
        raise InputError(f"the measurements are on a {op.height}x{op.width} grid but the model works on "
                         f"{size}x{size} for this MRI.",
                         "simulate or write the sinograms for the model's grid (see `mrtoct info`).")
    n_slices = to_canonical(np.zeros(mri.array.shape, dtype=np.uint8), mri.geometry)[1].n_slices
    if meas.n_slices != n_slices:
        raise InputError(f"there are {meas.n_slices} sinograms but the MRI has {n_slices} axial slices.",
                         "give one sinogram per axial slice of this MRI.")
    name = options.sampler or model.default_sampler
    given_sampler_options = dict(options.sampler_options)
    mode_wanted = options.nsmi if options.nsmi != "auto" else ("noisy" if meas.noise_sigma > 0 else "noiseless")
    if mode_wanted == "noisy" and name == "ddim" and "eta" not in options.sampler_options:
        options.sampler_options["eta"] = 1.0
    sampler = model.make_sampler(options.sampler, model.steps_for(options.sampler, options.steps, options.samples),
                                 **options.sampler_options)
    mode, notes = resolve_nsmi(options.nsmi, meas.noise_sigma, sampler, meas)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    if mode == "prior":  # exactly the MRI-only run (its grid and sampler options), measurements recorded as unused
        options.sampler_options = given_sampler_options
        result = _sample_volume(mri, model, options, progress, cancel, None)
    else:
        result = _sample_volume(mri, model, options, progress, cancel, meas.hook_for(mode), square_size=size)
    result.info["method"] = {"noisy": "ddmm_synth_noise", "wiener": "ddmm_synth_noise_wiener",
                             "prior": getattr(model, "source_method", "ddpm")}.get(mode, "ddmm_synth")
    result.info["sampler_options"] = dict(options.sampler_options)
    result.info["measurements"] = {
        "source": meas.source, "nsmi": mode, "nsmi_requested": options.nsmi,
        "n_projections": meas.n_projections, "n_detectors": op.n_det,
        "angles": "uniform over [0, 180) degrees", "grid": [op.height, op.width],
        "noise_sigma": meas.noise_sigma, "noise_sigma_units": "model units x pixel length, per detector bin",
        "sigma_n_image": meas.sigma_n_image, "pinv": op.method, "pinv_regularization": op.regularization,
        "informative_fraction": meas.informative_fraction() if mode in ("wiener", "prior") else None,
        "checkpoint_method": getattr(model, "source_method", model.method), "notes": notes,
        **meas.details,
    }
    result.measurements = meas
    return result


def square_grid_size(model, mri: Volume) -> int:
    """Side of the square model grid for ``mri``: the checkpoint's ``image_size``, or, for a model with a
    recorded pixel size, the square field of view (the larger in-plane extent) in that pixel size, rounded to
    a multiple of the network's down-sampling factor. DDMM-Synth's measurement operator works on this grid."""
    if getattr(model, "pixel_mm", None) is None:
        return int(model.image_size)
    layout = to_canonical(np.zeros(mri.array.shape, dtype=np.uint8), mri.geometry)[1]
    rows, cols = layout.canonical_shape[1], layout.canonical_shape[2]
    side_mm = max(rows * layout.pixel_spacing[0], cols * layout.pixel_spacing[1])
    f = max(1, int(model.grid_multiple))
    return max(f, int(round(side_mm / model.pixel_mm / f)) * f)


def _sample_volume(mri: Volume, model, options: SynthesisOptions, progress: ProgressFn | None,
                   cancel: Callable[[], bool] | None,
                   x0_hook_for: Callable[[np.ndarray], Callable | None] | None,
                   square_size: int | None = None) -> SynthesisResult:
    """The slice-wise engine behind :func:`synthesize` (steps 1-6 of the module docstring).

    ``square_size`` forces the square model grid of that side (DDMM-Synth: the measurements' grid)."""
    device = resolve_device(options.device)
    prepare_model(model, device, options)
    sampler = model.make_sampler(options.sampler, model.steps_for(options.sampler, options.steps, options.samples),
                                 **options.sampler_options)

    norm = MRNormalization.fit(mri.array, what="MRI")
    canon, layout = to_canonical(norm.apply(np.asarray(mri.array, dtype=np.float32)), mri.geometry)
    held = {"canon": canon}  # the only reference the batch loop uses, dropped after it
    n_slices, k = layout.n_slices, options.samples
    pixel_mm = getattr(model, "pixel_mm", None)
    if pixel_mm is not None and square_size is None:
        box = foreground_box_mm(canon, layout.pixel_spacing) if options.crop_to_body else None
        grid = plan_physical_grid(layout, pixel_mm, model.grid_multiple, box)
        shape = grid.shape
        grid_info = {"kind": "physical", "pixel_mm": pixel_mm, "shape": list(shape), "crop_box_mm": box,
                     "origin_mm": list(grid.origin_mm)}

        def conditions(indices):
            return to_physical_grid(held["canon"], layout, grid, model.context, indices=indices)

        def back(x, background):
            return from_physical_grid(x, layout, grid, background=background)
    else:
        size = int(square_size or model.image_size)
        shape = (size, size)
        side_mm = max(layout.canonical_shape[1] * layout.pixel_spacing[0],
                      layout.canonical_shape[2] * layout.pixel_spacing[1])
        grid_info = {"kind": "square_fov", "shape": [size, size], "pixel_mm": side_mm / size}

        def conditions(indices):
            return to_model_grid(held["canon"], layout, size, model.context, indices=indices)

        def back(x, background):
            return from_model_grid(x, layout)
    # the out-of-distribution features of this input (pipeline.input_check), and the body the MC std level is taken in
    features = input_features(canon, (canonical_layout(mri.geometry)[2][0],) + tuple(layout.pixel_spacing),
                              float(grid_info["pixel_mm"]))
    body = body_mask(canon, layout.pixel_spacing)
    del canon  # from here on only `held` refers to it
    batch = options.batch_size or default_batch_size(device, shape)
    n_items = n_slices * k  # (slice, sample) items, slice-major: a slice's samples are finished together
    batch = check_batch_memory(model, batch, n_items, device, explicit=options.batch_size is not None, shape=shape)

    moments = RunningMoments((n_slices, 1) + tuple(shape), device=device)
    gen = torch.Generator(device=device).manual_seed(int(options.seed))
    total_nfe, n_batches, t0, start = 0, 0, time.perf_counter(), 0
    while start < n_items:
        if cancel is not None and cancel():
            raise CancelledError("synthesis cancelled")
        idx = np.arange(start, min(start + batch, n_items)) // k  # the slices of items start .. start + batch - 1
        # each slice of the batch is resampled once and moved once, then repeated for its K samples
        uniq, inverse = np.unique(idx, return_inverse=True)
        cond = conditions(uniq).to(device)
        if len(uniq) != len(idx):
            cond = cond.index_select(0, torch.as_tensor(inverse.reshape(-1), device=device))
        if options.channels_last:
            cond = cond.contiguous(memory_format=torch.channels_last)
        hook = x0_hook_for(idx) if x0_hook_for is not None else None
        try:
            with torch.no_grad(), autocast(device, options.precision):
                out = model.sample(cond, sampler, generator=gen, x0_hook=hook, cancel=cancel)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise InputError("the GPU ran out of memory even with one image per batch.",
                                 "use --device cpu, a smaller model, or free GPU memory.") from None
            torch.cuda.empty_cache()
            batch = max(1, batch // 2)
            if progress:
                progress(start / n_items, f"CUDA out of memory: retrying with batch size {batch}")
            continue
        except Exception as exc:
            if options.compile and _is_compile_failure(exc):
                raise InputError(f"torch.compile failed on {device.type}: {type(exc).__name__}: {str(exc)[:300]}",
                                 "run without --compile (the default).") from exc
            if _is_cpu_out_of_memory(exc):
                raise InputError(f"the computer ran out of memory with {len(idx)} images per network call.",
                                 f"use a smaller --batch-size (e.g. {max(1, len(idx) // 4)}), close other programs, "
                                 "or use a smaller model.") from None
            raise
        moments.update(torch.as_tensor(idx, device=device), out.x0.float())
        total_nfe += out.nfe
        n_batches += 1
        start += len(idx)
        if progress:
            elapsed = time.perf_counter() - t0
            eta = elapsed / start * (n_items - start)
            done_slices = start // k
            progress(start / n_items, f"slices {done_slices}/{n_slices}, samples {start}/{n_items}, "
                                         f"{elapsed:.1f} s elapsed, ~{eta:.0f} s left")

    held.clear()  # the input-grid copy of the MRI is not needed any more (large volumes: one volume less at the peak)
    mean = from_canonical(back(moments.mean().float(), -1.0), layout)
    std_canon = back(moments.std().float(), 0.0)
    mc_std_hu = float(model_std_to_hu(std_canon[body]).mean()) if k > 1 and body.any() else None
    scale, scale_note = calibration_scale(model.metadata.get("uncertainty_calibration"), model.method, sampler.name,
                                          sampler.steps, k)
    std = from_canonical(std_canon * scale, layout)
    del std_canon
    record = model.metadata.get("input_record")
    run = (record or {}).get("mc_std_hu", {}).get("run", {})
    # the record's MC std level was measured from the MRI alone: not comparable with a measurement-pinned run
    same_run = run.get("sampler") == sampler.name and run.get("steps") == sampler.steps and x0_hook_for is None
    input_check = check_input(features, record, mc_std_hu if same_run else None)
    if mc_std_hu is not None and not same_run and record and record.get("mc_std_hu"):
        input_check["features"]["mc_std_hu"] = mc_std_hu
        input_check["notes"] = [
            "MC std level not compared: this run is pinned to CT measurements" if x0_hook_for is not None else
            f"MC std level not compared: the record's level was measured with {run.get('sampler')} {run.get('steps')} "
            f"steps, this run used {sampler.name} {sampler.steps}"]
    seconds = time.perf_counter() - t0
    info = {
        "method": model.method, "sampler": sampler.name, "steps": sampler.steps, "samples": k, "seed": options.seed,
        "device": str(device), "batch_size": batch, "precision": options.precision,
        "channels_last": options.channels_last, "compile": options.compile_mode if options.compile else False,
        "backend": options.backend,
        "nfe_per_sample": total_nfe / max(1, n_batches),
        "slices": n_slices, "seconds": seconds, "seconds_per_slice": seconds / n_slices,
        "mr_normalization": norm.to_dict(), "model_grid": grid_info,
        # is this MRI like the training images (pipeline.input_check); the std's recalibration (pipeline.uncertainty)
        "input_check": input_check,
        "uncertainty": {"ddof": 1, "raw_mean_std_hu": mc_std_hu, "calibration_factor": scale, "note": scale_note,
                        "is_uncertainty": model.method not in NOT_AN_UNCERTAINTY},
        # the record a run can be rebuilt from (`mrtoct synthesize --from-record`): the sampler's whole config,
        # the options as given, and what bit-exactness on CPU also depends on (torch version, thread count)
        "sampler_config": sampler.to_config(), "options": dataclasses.asdict(options),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    return SynthesisResult(
        sct=mri.with_array(model_to_hu(mean).astype(np.float32)),
        std=mri.with_array(np.clip(model_std_to_hu(std), 0, None).astype(np.float32)),
        info=info,
    )
