"""Training configs: the engine's defaults, YAML files (``training/configs/<method>.yaml`` hold the papers'
values), ``--set KEY=VALUE`` overrides and validation, all before anything is built."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..models.methods import METHODS

#: every key a training config may hold, with the engine's defaults. ``training/configs/<method>.yaml``
#: give each method's paper values with citations; None = the method's own default (``method_config``).
DEFAULT_CONFIG: dict[str, dict[str, Any] | str] = {
    "method": "ddpm",
    "model": {"image_size": 64, "context": 0, "unet": "tiny", "prediction": "eps", "process": None, "options": {},
              "pixel_mm": None},
    "data": {"root": None, "split": None, "val_fraction": 0.1, "test_fraction": 0.2, "split_seed": 0,
             "register": False, "cache": True, "cache_dir": None, "disjoint_cases": False, "augment": None},
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
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid YAML"
            raise InputError(f"--set {item!r}: the value {value!r} is not valid YAML ({first}).",
                             "write a number, true/false, a word, or a list such as [0.9, 0.999].") from None
        cfg = _merge(cfg, update, "")
    return validate_config(cfg)


def get_key(cfg: dict, dotted: str):
    """The value at a dotted config key such as ``train.batch_size``."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


#: bounds of the sizes a training config may ask for (checked before anything is allocated): the model grid
#: (the "full" preset is 256; 2048 x 2048 slices are far beyond any GPU's memory for a diffusion UNet), 2.5D
#: context slices, and slices per step (also checked against free memory, see :func:`check_training_memory`)
MAX_IMAGE_SIZE = 2048
MAX_CONTEXT = 16
MAX_BATCH_SIZE = 4096
#: a rough upper estimate of the training memory per pixel of a batch: activations and their gradients of the
#: networks (the tiny UNet keeps ~300 float32 values per pixel for the backward pass; GAN methods train several)
_TRAIN_BYTES_PER_PIXEL = 4 * 1024
#: a few levels are plenty for any training config; a deeper one is refused before anything walks it
_MAX_DEPTH = 16


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else \
        "true/false" if isinstance(value, bool) else repr(value)


def _check_type(name: str, value: Any, ok: bool, want: str, example: str) -> None:
    if not ok:
        raise InputError(f"config {name} must be {want}, got {_kind(value)}.", f"set {name} to {example} "
                         f"(in the YAML file or with --set {name}={example.split(',')[0]}).")


def _depth(obj: Any) -> int:
    depth, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return depth


def check_device_name(name: Any, key: str = "train.device") -> None:
    """A device name torch can parse and the engine supports (auto, cpu, cuda, cuda:N, mps); whether that device is
    present is checked when the run starts."""
    import torch  # already imported by the methods this module imports; here for the device parser

    from ..devices import DEVICE_HELP

    text = str(name).strip().lower() if isinstance(name, str) else None
    ok = text == "auto"
    if text and not ok:
        try:
            ok = torch.device(text).type in ("cpu", "cuda", "mps")
        except (RuntimeError, ValueError):
            ok = False
    if not ok:
        raise InputError(f"config {key} {name!r} is not a device this engine can use.", f"use {DEVICE_HELP}.")


def check_training_memory(cfg: dict) -> None:
    """Refuse a batch whose estimated training memory (:data:`_TRAIN_BYTES_PER_PIXEL`) exceeds the free memory."""
    from ..io.memory import available_memory_bytes, format_bytes

    m, t = cfg["model"], cfg["train"]
    need = int(t["batch_size"]) * int(m["image_size"]) ** 2 * _TRAIN_BYTES_PER_PIXEL
    free = available_memory_bytes()
    if free is not None and need > free and str(t["device"]).lower() in ("cpu", "auto"):
        import torch

        if str(t["device"]).lower() == "auto" and torch.cuda.is_available():
            return  # GPU memory is what counts; the run reports a CUDA out-of-memory error itself
        fits = max(1, free // (int(m["image_size"]) ** 2 * _TRAIN_BYTES_PER_PIXEL))
        raise InputError(f"train.batch_size {t['batch_size']} at model.image_size {m['image_size']} would need about "
                         f"{format_bytes(need)} of memory to train (estimate), but only {format_bytes(free)} is "
                         "available.",
                         f"use a batch size of {fits} or less (--batch-size), or a smaller --image-size.")


def validate_config(cfg: dict) -> dict:
    """Check every key's type and range (before anything is built); :class:`InputError` names the key and a fix."""
    if _depth(cfg) > _MAX_DEPTH:
        raise InputError(f"the training config is nested more than {_MAX_DEPTH} levels deep.",
                         "see training/configs/ddpm.yaml for the layout.")
    if not isinstance(cfg.get("method"), str) or cfg["method"] not in METHODS or not METHODS[cfg["method"]].trainable:
        trainable = [m for m, cls in METHODS.items() if cls.trainable]
        raise InputError(f"method {cfg['method']!r} cannot be trained.",
                         f"use one of {', '.join(trainable)} (ddmm_synth samples a trained ddpm).")
    t, o, d = cfg["train"], cfg["optim"], cfg["data"]
    # YAML 1.1 reads "3e-4" (no dot) as a string: accept numbers written that way
    text_keys = {"root", "split", "cache_dir", "device", "val_sampler", "decay", "unet", "prediction", "term", "amp"}
    for section in (t, o, d, cfg["model"], t["early_stop"]):
        for key, value in section.items():
            if isinstance(value, str) and key not in text_keys:
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

    m = cfg["model"]
    if cfg["model"]["pixel_mm"] is not None:
        positive("model.pixel_mm", cfg["model"]["pixel_mm"], integer=False)
    if d["augment"] is not None and not isinstance(d["augment"], dict):
        raise InputError(f"config data.augment must be a mapping of transforms, got {d['augment']!r}.",
                         "see MRtoCTSynthesisLib/data/augment.py, e.g. {bias_field: {p: 0.3}}.")
    positive("train.batch_size", t["batch_size"])
    positive("model.image_size", m["image_size"])
    if m["image_size"] > MAX_IMAGE_SIZE:
        raise InputError(f"config model.image_size {m['image_size']} is above the limit of {MAX_IMAGE_SIZE}.",
                         "use a model grid of 64 (CPU) to 256 (GPU), e.g. --image-size 64.")
    if t["batch_size"] > MAX_BATCH_SIZE:
        raise InputError(f"config train.batch_size {t['batch_size']} is above the limit of {MAX_BATCH_SIZE}.",
                         "use e.g. --batch-size 2 (Lyu & Wang) to 64.")
    positive("model.context", m["context"], allow_zero=True)
    if m["context"] > MAX_CONTEXT:
        raise InputError(f"config model.context {m['context']} is above the limit of {MAX_CONTEXT} neighbour slices.",
                         "use 0 (2D) or a few slices, e.g. --context 1.")
    _check_type("model.unet", m["unet"], isinstance(m["unet"], (str, dict)), "a preset name or a mapping of UNet "
                "fields", "tiny")
    _check_type("model.prediction", m["prediction"], m["prediction"] in ("eps", "v"), "eps or v", "eps")
    _check_type("model.process", m["process"], m["process"] is None or isinstance(m["process"], dict),
                "a mapping of diffusion settings (or null for the method's default)", "null")
    _check_type("model.options", m["options"], m["options"] is None or isinstance(m["options"], dict),
                "a mapping of method options", "{}")
    for key in ("root", "split", "cache_dir"):
        _check_type(f"data.{key}", d[key], d[key] is None or isinstance(d[key], str), "a path (or null)", "null")
    for key in ("register", "cache", "disjoint_cases"):
        _check_type(f"data.{key}", d[key], isinstance(d[key], bool), "true or false", "false")
    for key in ("val_fraction", "test_fraction", "decay_start", "ema_decay", "eps"):
        sec, name = (o, f"optim.{key}") if key in ("decay_start", "eps") else (t, f"train.{key}") \
            if key == "ema_decay" else (d, f"data.{key}")
        v = sec[key]
        _check_type(name, v, isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                    "a number", "0.1" if key != "eps" else "1e-8")
    positive("optim.eps", o["eps"], integer=False)
    positive("data.split_seed", d["split_seed"], allow_zero=True)
    seed = t["seed"]
    _check_type("train.seed", seed, isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= 2 ** 62,
                "a whole number between 0 and 2**62", "0")
    check_device_name(t["device"])
    _check_type("train.val_sampler", t["val_sampler"], t["val_sampler"] is None or isinstance(t["val_sampler"], str),
                "a sampler name (or null for the method's default)", "null")
    _check_type("optim.decay", o["decay"], isinstance(o["decay"], str), "none or linear", "none")
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
        raise InputError(f"config train.ema_decay must be in [0, 1), got {t['ema_decay']!r}.",
                         "use e.g. 0.999 (0 = no EMA).")
    if o["decay"] not in ("none", "linear"):
        raise InputError(f"config optim.decay must be 'none' or 'linear', got {o['decay']!r}.", "use 'linear' for "
                         "CycleGAN-style decay to 0.")
    if not 0 <= float(o["decay_start"]) < 1:
        raise InputError(f"config optim.decay_start must be in [0, 1), got {o['decay_start']!r}.", "use e.g. 0.5.")
    if not (t["amp"] == "auto" or isinstance(t["amp"], bool)):
        raise InputError(f"config train.amp must be auto, true or false, got {t['amp']!r}.", "use auto.")
    if o["betas"] is not None and (not isinstance(o["betas"], (list, tuple)) or len(o["betas"]) != 2
                                   or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                              for b in o["betas"])):
        raise InputError(f"config optim.betas must be two numbers in [0, 1), got {o['betas']!r}.", "e.g. [0.9, 0.999].")
    if not (0 <= float(d["val_fraction"]) < 1 and 0 <= float(d["test_fraction"]) < 1):
        raise InputError("config data.val_fraction and data.test_fraction must be in [0, 1).", "e.g. 0.1 and 0.2.")
    check_training_memory(cfg)
    return cfg
