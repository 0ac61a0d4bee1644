"""Training runs: the run folder behind ``mrtoct train`` / ``training/train.py``.

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
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from ..data.augment import build_augmentation
from ..data.cases import (
    PatchDataset,
    SliceDataset,
    UnpairedSliceDataset,
    find_cases,
    is_paired,
    make_split,
    read_split,
    write_split,
)
from ..devices import resolve_device
from ..errors import InputError
from ..io.atomic import atomic_write
from ..io.intensity import model_to_hu
from ..models.checkpoint import STATE_PREFIX, load_checkpoint
from ..models.methods import create_model, save_model
from .config import RESUME_KEYS, get_key, validate_config
from .loop import LossPlateau, train_loop
from .state import process_group, state_tensors


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
            from torch.utils.tensorboard import SummaryWriter  # optional: the 'train' extra installs tensorboard

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
        d, m = self.cfg["data"], self.cfg["model"]
        kw = dict(image_size=m["image_size"], context=m["context"], cache_dir=self.cache_dir, register=d["register"])
        if model.unpaired:
            return UnpairedSliceDataset.from_folders(folders, disjoint_cases=d["disjoint_cases"], **kw)
        if d["disjoint_cases"]:
            raise InputError(f"data.disjoint_cases applies to unpaired training, but {model.method!r} here trains on "
                             "registered pairs.", "drop --disjoint-cases (or train an unpaired method).")
        single = [Path(f).name for f in folders if not is_paired(f)]
        if single:
            raise InputError(f"method {model.method!r} trains on registered MR/CT pairs, but training case(s) "
                             f"{', '.join(single)} hold only one of the two.",
                             "remove them from the split, or train an unpaired method (syndiff, cyclegan).")
        if m["pixel_mm"] is not None:  # patches of image_size pixels at the model's physical pixel size
            return PatchDataset.from_folders(folders, float(m["pixel_mm"]), m["image_size"], m["context"],
                                             cache_dir=self.cache_dir, register=d["register"],
                                             augment=build_augmentation(d["augment"]))
        if d["augment"]:
            raise InputError("data.augment works with patch training at a physical pixel size (model.pixel_mm).",
                             "set model.pixel_mm (e.g. 2.0), or drop data.augment.")
        return SliceDataset.from_folders(folders, **kw)

    # ------------------------------------------------------------------ checkpoints
    def _fingerprint(self) -> dict:
        return {k: get_key(self.cfg, k) for k in RESUME_KEYS}

    def _training_record(self, state, seconds: float) -> dict:
        tail = {k: float(sum(v[-100:]) / len(v[-100:])) for k, v in state.history.items() if v}
        return {"config": self.cfg, "fingerprint": self._fingerprint(), "step": state.step,
                "total_steps": self.total_steps, "slices": self.slices, "unpaired": self.unpaired,
                "cases": {k: [Path(c).name for c in v] for k, v in self.split.items()},
                "final_terms_mean_last_100": tail, "final_loss_mean_last_100": tail.get("loss"),
                "best_val": self.best, "seconds": seconds, "world_size": self.world,
                "plateau": self.plateau.state() if self.plateau else None, "stopped_early": self.stopped_early,
                "val_sampler": getattr(self, "val_sampler_config", None),
                "command": self.command or " ".join(sys.argv)}

    def _save(self, path: Path, model, state, ema, with_state: bool, record: dict) -> None:
        extra = None
        rec = dict(record)
        if with_state:
            extra, doc = state_tensors(state)
            rec["resume"] = doc
        save_model(model, path, training=rec, ema={n: e.shadow for n, e in ema.items()}, extra=extra)

    def _load_resume(self, model) -> dict | None:
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
        diff = [k for k in RESUME_KEYS if json.dumps(old.get(k),
                                                     sort_keys=True) != json.dumps(new.get(k), sort_keys=True)]
        if diff:
            raise InputError(f"--resume: the config differs from the interrupted run's in {', '.join(diff)}.",
                             f"use the run's own config ({self.run_dir / 'config.yaml'}), or start a new --run-dir.")
        if rec.get("stopped_early") and self.cfg["train"]["early_stop"]["enabled"]:
            raise InputError(f"--resume: the run already stopped on a loss plateau at step "
                             f"{rec['stopped_early']['step']} "
                             f"(Lyu & Wang's rule, train.early_stop).",
                             "use its model.safetensors, or train on with --set train.early_stop.enabled=false.")
        self.best = rec.get("best_val")
        return {"networks": {n: ck.tensors[n] for n in model.networks},
                "ema": {n: ck.tensors[f"ema.{n}"] for n in model.inference_networks if f"ema.{n}" in ck.tensors},
                "tensors": ck.tensors.get(STATE_PREFIX, {}), "doc": rec["resume"], "plateau": rec.get("plateau")}

    # ------------------------------------------------------------------ validation
    def _validate(self, model, ema) -> dict:
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
        self.val_sampler_config = sampler.to_config()  # the full validation sampler, for the training record
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
        dist = process_group()
        if dist and term != "loss":
            t = torch.tensor([value], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            value = t.item() / self.world
        return value

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False, progress: bool = True) -> Path:
        dist = process_group()
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
                             options=options or None, pixel_mm=m["pixel_mm"])
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
            if m["pixel_mm"] is not None:  # fixed patches (seeded, no augmentation) of the validation cases
                vp = PatchDataset.from_folders(self.split["val"][: int(t["val_cases"])], float(m["pixel_mm"]),
                                               m["image_size"], m["context"], cache_dir=self.cache_dir,
                                               register=d["register"])
                self.val_data = vp.fixed_batch(int(t["val_slices"]), seed=int(t["seed"]))
            else:
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
                    print(f"PROGRESS {step / self.total_steps:.4f} step {step}/{self.total_steps} loss "
                          f"{out['loss']:.4f} "
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
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return True
