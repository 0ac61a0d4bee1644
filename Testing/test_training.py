"""The training toolkit: configs, splits, slice cache, every method end to end with resume, kill-and-resume,
NaN stop and torchrun on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.data import cases as data_mod
from MRtoCTSynthesisLib.data.cases import SliceDataset, load_case_slices, make_split, read_split
from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.models.checkpoint import read_metadata
from MRtoCTSynthesisLib.models.methods import create_model
from MRtoCTSynthesisLib.training import state as train_state
from MRtoCTSynthesisLib.training.config import apply_overrides, default_config, load_config
from MRtoCTSynthesisLib.training.loop import LossPlateau, train_loop
from MRtoCTSynthesisLib.training.state import lr_factor, step_seed

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "training" / "configs"
METHODS = ["ddpm", "score_sde", "syndiff", "unet_cnn", "pix2pix", "wgan_gp", "cyclegan"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Five 32x32x6 phantom cases (enough for a train/val/test split)."""
    out = tmp_path_factory.mktemp("train_cases")
    assert main(["phantom", "--out", str(out), "--cases", "5", "--seed", "7", "--size", "32", "32", "6",
                 "--spacing", "11", "11", "14"]) == 0
    return out


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MRTOCT_CACHE", str(tmp_path / "cache"))


def _train_args(method, data, run_dir, steps, *extra):
    return ["train", "--config", str(CONFIGS / f"{method}.yaml"), "--data", str(data), "--run-dir", str(run_dir),
            "--image-size", "32", "--unet", "tiny", "--steps", str(steps), "--batch-size", "2",
            "--checkpoint-every", "2", "--val-every", "2", "--device", "cpu", "--set", "train.val_steps=2",
            "--set", "train.log_every=1", *extra]


# ---------------------------------------------------------------------------------------------- configs
def test_every_method_has_a_config_with_the_papers_optimiser():
    expected_lr = {"ddpm": 1e-4, "score_sde": 1e-4, "unet_cnn": 1e-4, "wgan_gp": 1e-4, "syndiff": 1e-4,
                   "pix2pix": 2e-4, "cyclegan": 2e-4}
    for method in METHODS:
        cfg = load_config(CONFIGS / f"{method}.yaml")
        assert cfg["method"] == method
        assert cfg["optim"]["lr"] == pytest.approx(expected_lr[method])
    # Lyu & Wang Sec. IV: Adam (0.9, 0.999), eps 1e-8, batch size 2; SynDiff Sec. IV-C: betas (0.5, 0.9), 50 epochs
    lyu = load_config(CONFIGS / "ddpm.yaml")
    assert lyu["optim"]["betas"] == [0.9, 0.999] and lyu["optim"]["eps"] == 1e-8 and lyu["train"]["batch_size"] == 2
    syn = load_config(CONFIGS / "syndiff.yaml")
    assert syn["optim"]["betas"] == [0.5, 0.9] and syn["train"]["epochs"] == 50
    assert syn["model"]["process"]["k"] == 250 and syn["model"]["options"]["lambda_cycle"] == 0.5


def test_config_refuses_unknown_keys_and_bad_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: ddpm\ntrain: {stepz: 10}\n")
    with pytest.raises(InputError, match="stepz"):
        load_config(bad)
    with pytest.raises(InputError, match="batch_size"):
        apply_overrides(default_config(), ["train.batch_size=0"])
    with pytest.raises(InputError, match="ddmm_synth"):
        apply_overrides(default_config(), ["method=ddmm_synth"])
    assert apply_overrides(default_config(), ["optim.lr=3e-4"])["optim"]["lr"] == pytest.approx(3e-4)


def test_config_paths_cannot_leave_the_config_folder(tmp_path):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    cfg = folder / "run.yaml"
    cfg.write_text("method: ddpm\ndata: {root: data}\n")
    assert Path(load_config(cfg)["data"]["root"]) == (folder / "data").resolve()
    cfg.write_text("method: ddpm\ndata: {root: ../elsewhere}\n")
    with pytest.raises(InputError, match="outside"):
        load_config(cfg)
    (folder / "link").symlink_to(tmp_path)  # a link out of the folder is no way around it
    cfg.write_text("method: ddpm\ndata: {root: link/x}\n")
    with pytest.raises(InputError, match="outside"):
        load_config(cfg)
    cfg.write_text(f"method: ddpm\ndata: {{root: {tmp_path / 'abs'}}}\n")  # written out in full: allowed
    assert load_config(cfg)["data"]["root"] == str(tmp_path / "abs")


def test_lr_schedule_matches_the_papers_description():
    # CycleGAN / SynDiff Sec. IV-B.2: constant for the first half, then linearly to 0 over the second half
    total = 100
    f = [lr_factor(s, total, decay="linear", decay_start=0.5) for s in range(total)]
    assert f[:50] == [1.0] * 50
    assert f[50] == 1.0 and f[75] == pytest.approx(0.5) and f[99] == pytest.approx(1 / 50)
    assert all(a >= b for a, b in zip(f, f[1:]))
    assert [lr_factor(s, total, warmup=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_step_seeds_differ_across_steps_ranks_and_seeds():
    seeds = {step_seed(s, r, k) for s in range(3) for r in range(4) for k in range(500)}
    assert len(seeds) == 3 * 4 * 500
    assert step_seed(0, 0, 17) == step_seed(0, 0, 17)


# ---------------------------------------------------------------------------------------------- data
def test_split_is_by_case_and_reproducible(cases, tmp_path):
    names = [f"p{i:02d}" for i in range(20)]
    a, b = make_split(names, 0.1, 0.2, seed=3), make_split(names, 0.1, 0.2, seed=3)
    assert a == b and (len(a["train"]), len(a["val"]), len(a["test"])) == (14, 2, 4)
    assert sorted(a["train"] + a["val"] + a["test"]) == names
    assert make_split(names, 0.1, 0.2, seed=4) != a
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["case_000", "case_001"], "test": ["case_002"]}))
    got = read_split(split, cases)
    assert [p.name for p in got["train"]] == ["case_000", "case_001"] and got["val"] == []
    for bad, word in [({"train": ["../case_000"]}, "plain case-folder name"),
                      ({"train": ["case_000"], "test": ["case_000"]},
                      "both"), ({"train": ["nope"]}, "no folder"), ({"training": ["case_000"]}, "must map")]:
        split.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=word):
            read_split(split, cases)


def test_slice_cache_is_reused_and_invalidated(cases, tmp_path, monkeypatch):
    case = cases / "case_000"
    first = load_case_slices(case, 32, 0, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").iterdir())) == 1

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(data_mod, "case_slices", boom)
    again = load_case_slices(case, 32, 0, cache_dir=tmp_path / "c")
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    monkeypatch.undo()
    os.utime(case / "ct.nii.gz", ns=(time.time_ns(), time.time_ns() + 10**9))  # an edited volume is re-read
    load_case_slices(case, 32, 0, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").iterdir())) == 2


def test_unpaired_methods_train_on_single_modality_cases(cases, tmp_path):
    """Unpaired data from different patients: MR-only and CT-only folders train SynDiff/CycleGAN; val and test
    come from the paired cases only; a paired method names the single-modality cases and the fix."""
    import shutil

    from MRtoCTSynthesisLib.data.cases import UnpairedSliceDataset, find_cases
    from MRtoCTSynthesisLib.training.run import TrainingRun

    data = tmp_path / "mixed"
    shutil.copytree(cases, data)
    for name, drop in (("case_000", "ct"), ("case_001", "mr")):
        for f in (data / name).glob(f"{drop}.*"):
            f.unlink()
    assert len(find_cases(data)) == 3 and len(find_cases(data, partial=True)) == 5
    paired = SliceDataset.from_folders(find_cases(data), 32)
    mixed = UnpairedSliceDataset.from_folders(find_cases(data, partial=True), 32)
    mr_only, none_ct = load_case_slices(data / "case_000", 32, partial=True)
    none_mr, ct_only = load_case_slices(data / "case_001", 32, partial=True)
    assert none_ct is None and none_mr is None
    assert len(mixed.mr) == len(paired.mr) + len(mr_only) and len(mixed.ct) == len(paired.ct) + len(ct_only)

    run = tmp_path / "run"
    assert main(_train_args("cyclegan", data, run, 2)) == 0
    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    assert {"case_000", "case_001"} <= set(split["train"])
    assert not {"case_000", "case_001"} & set(split["val"] + split["test"]) and split["val"] and split["test"]
    rec = read_metadata(run / "model.safetensors")["training"]
    train_paired = [n for n in split["train"] if n not in ("case_000", "case_001")]
    per_case = {n: len(load_case_slices(data / n, 32)[0]) for n in train_paired}
    assert rec["slices"] == {"mr": len(mr_only) + sum(per_case.values()), "ct": len(ct_only) + sum(per_case.values())}

    cfg = apply_overrides(default_config("unet_cnn"), [f"data.root={data}", f"data.split={run / 'split.json'}",
                                                      "model.image_size=32", "train.steps=1", "train.device=cpu"])
    with pytest.raises(InputError, match=r"case_000.*only one") as err:
        TrainingRun(cfg, tmp_path / "paired_run").run(progress=False)
    assert "unpaired method" in err.value.fix
    with pytest.raises(InputError, match="disjoint_cases applies to unpaired"):
        TrainingRun(apply_overrides(cfg, ["data.split=null", "data.disjoint_cases=true"]),
                    tmp_path / "p2").run(progress=False)
    # disjoint pools from one paired case (its MR is taken, its CT left out) and an MR-only case: no CT at all
    with pytest.raises(InputError, match="disjoint_cases the CT pool is empty") as err:
        UnpairedSliceDataset.from_folders([data / "case_002", data / "case_000"], 32, disjoint_cases=True)
    assert "drop disjoint_cases" in err.value.fix

    # the watched term must exist, and is named in the error
    bad = apply_overrides(default_config("cyclegan"), [f"data.root={data}", "model.image_size=32", "train.steps=2",
                                                       "train.device=cpu", "train.early_stop.enabled=true",
                                                       "train.early_stop.term=nope"])
    with pytest.raises(InputError, match="'nope' is not a loss term") as err:
        TrainingRun(bad, tmp_path / "p3").run(progress=False)
    assert "loss" in err.value.fix


# ---------------------------------------------------------------------------------------------- loop
def test_nan_loss_stops_with_a_message():
    mr = torch.zeros(4, 1, 16, 16)
    ct = torch.full((4, 1, 16, 16), float("nan"))
    model = create_model("unet_cnn", 16)
    with pytest.raises(InputError, match=r"non-finite at step 1.*") as err:
        train_loop(model, SliceDataset(mr, ct, ["x"]), steps=3, batch_size=2)
    assert "--resume" in err.value.fix


def test_loss_plateau_rule_on_a_hand_worked_sequence():
    """Lyu & Wang Sec. IV: at least min_epochs, then stop once an epoch's mean loss is not min_decrease below
    the mean of the previous `window` epochs. Epoch means 8, 4, 2, 1, 1, 1 with window 2 and 10 %: epoch 5
    compares 1 with 0.9 * mean(2, 1) = 1.35 (goes on); epoch 6 compares 1 with 0.9 * mean(1, 1) = 0.9 (stops)."""
    means = [8, 4, 2, 1, 1, 1, 1]
    per_step = [v + d for v in means for d in (-0.5, 0.0, 0.5)]  # three steps per epoch around each mean
    rule = LossPlateau(3, min_epochs=5, window=2, min_decrease=0.1)
    stops = [step for step, loss in enumerate(per_step, 1) if rule.add(step, loss)]
    assert stops[0] == 18 and rule.epochs[:6] == [8, 4, 2, 1, 1, 1]
    # carried through a checkpoint in the middle of an epoch, it decides identically
    first = LossPlateau(3, min_epochs=5, window=2, min_decrease=0.1)
    for step, loss in enumerate(per_step[:10], 1):
        first.add(step, loss)
    second = LossPlateau(3, min_epochs=5, window=2, min_decrease=0.1, state=json.loads(json.dumps(first.state())))
    assert [s for s, loss in enumerate(per_step[10:], 11) if second.add(s, loss)][0] == 18
    # min_epochs holds the rule back even on a flat loss
    flat = LossPlateau(1, min_epochs=4, window=1, min_decrease=0.01)
    assert [flat.add(s, 1.0) for s in range(1, 6)] == [False, False, False, True, True]
    # losses below zero (WGAN-GP's critic term): flat stops; falling by 2 % of |loss| per epoch goes on
    flat_neg = LossPlateau(1, min_epochs=3, window=2, min_decrease=0.01)
    assert [flat_neg.add(s, -10.0) for s in range(1, 5)] == [False, False, True, True]
    falling = LossPlateau(1, min_epochs=3, window=1, min_decrease=0.01)
    assert not any(falling.add(s, -10.0 * 1.02 ** s) for s in range(1, 30))


def test_early_stop_settings_are_checked(tmp_path):
    base = default_config("unet_cnn")
    with pytest.raises(InputError, match="below 1"):
        apply_overrides(base, ["train.early_stop.min_decrease=1.5"])
    with pytest.raises(InputError, match="true or false"):
        apply_overrides(base, ["train.early_stop.enabled=maybe"])
    assert load_config(CONFIGS / "wgan_gp.yaml")["train"]["early_stop"]["term"] == "mse"
    with pytest.raises(InputError, match="true or false"):
        create_model("syndiff", 32, options={"paired": "false"})


def test_run_stops_on_a_loss_plateau_and_resume_respects_it(cases, tmp_path):
    run = tmp_path / "run"
    # a learning rate of ~0 keeps the loss flat, so a 50 % drop is never reached: stop after epoch 2
    args = ["train", "--data", str(cases), "--method", "unet_cnn", "--image-size", "32", "--unet", "tiny",
            "--epochs", "6", "--batch-size", "4", "--lr", "1e-12", "--val-every", "0", "--device", "cpu",
            "--run-dir", str(run), "--set",
            "train.early_stop={enabled: true, min_epochs: 2, window: 1, min_decrease: 0.5}"]
    assert main(args) == 0
    rec = read_metadata(run / "model.safetensors")["training"]
    per_epoch = -(-sum(rec["slices"].values()) // 2 // 4)  # ceil(paired slices / batch)
    assert rec["stopped_early"]["step"] == 2 * per_epoch == rec["step"] < rec["total_steps"]
    assert rec["stopped_early"]["epoch_loss"] > 0.5 * rec["stopped_early"]["reference"]
    assert read_metadata(run / "last.safetensors")["training"]["step"] == 2 * per_epoch
    assert main([*args, "--resume"]) == 2  # already finished by the rule
    assert main([*args, "--resume", "--set", "train.early_stop.enabled=false"]) == 0
    assert read_metadata(run / "model.safetensors")["training"]["step"] == rec["total_steps"]


@pytest.mark.parametrize("method,variant", [(m, ()) for m in METHODS]
                         + [("syndiff", ("--set", "model.options.paired=true"))],  # SynDiff Sec. V-C variant
                         ids=[*METHODS, "syndiff-paired"])
def test_each_method_trains_resumes_exactly_and_evaluates(method, variant, cases, tmp_path, monkeypatch):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_train_args(method, cases, full, 4, *variant)) == 0
    for name in ("config.yaml", "split.json", "log.jsonl", "last.safetensors", "best.safetensors", "model.safetensors"):
        assert (full / name).exists(), name
    split = json.loads((full / "split.json").read_text(encoding="utf-8"))
    assert len(split["train"]) == 3 and len(split["val"]) == 1 and len(split["test"]) == 1
    log = [json.loads(ln) for ln in (full / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["step"] for e in log if "train" in e] == [1, 2, 3, 4]
    assert [e["step"] for e in log if "val" in e] == [2, 4]
    assert all(np.isfinite(e["val"]["psnr_db"]) for e in log if "val" in e)

    # interrupt the same run during step 3 (after the step-2 checkpoint), then resume it
    original = train_state.TrainState.update

    def interrupted(self, name, loss):
        if self.step >= 2:
            raise KeyboardInterrupt
        return original(self, name, loss)

    monkeypatch.setattr(train_state.TrainState, "update", interrupted)
    assert main(_train_args(method, cases, part, 4, *variant)) != 0
    assert read_metadata(part / "last.safetensors")["training"]["step"] == 2
    assert not (part / "model.safetensors").exists()
    monkeypatch.setattr(train_state.TrainState, "update", original)
    assert main(_train_args(method, cases, part, 4, *variant)) == 2  # refuses to start over a checkpoint silently
    assert main(_train_args(method, cases, part, 4, *variant, "--resume")) == 0
    a, b = load_file(str(full / "last.safetensors")), load_file(str(part / "last.safetensors"))
    assert set(a) == set(b) and any(k.startswith("train_state.opt.") for k in a)
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"resumed run differs from the uninterrupted one in {unequal[:5]}"

    # the final model evaluates on the held-out case
    out = tmp_path / "eval"
    assert main(["evaluate", "--models", str(full / "model.safetensors"), "--data", str(cases),
                 "--split", str(full / "split.json"), "--steps", "2", "--samples", "2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert split["test"][0] in json.dumps(results)
    assert (out / "table.md").read_text(encoding="utf-8").count("|") > 10


def test_kill_and_resume_reaches_the_uninterrupted_weights(cases, tmp_path):
    """SIGKILL a training process mid-run, resume it, and get bit-identical weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "MRtoCTSynthesis")}
    args = ["--data", str(cases), "--method", "ddpm", "--image-size", "32", "--steps", "40", "--batch-size", "2",
            "--checkpoint-every", "5", "--val-every", "0", "--device", "cpu", "--prediction", "v"]
    cmd = [sys.executable, "-m", "MRtoCTSynthesisLib.apps.cli", "train", *args]
    assert subprocess.run([*cmd, "--run-dir", str(tmp_path / "full")], env=env, capture_output=True).returncode == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--run-dir", str(run)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            step = read_metadata(run / "last.safetensors")["training"]["step"]
        except (InputError, OSError, KeyError):
            step = 0
        if step >= 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 10 <= step < 40, f"the run was not caught mid-way (step {step})"
    resumed = subprocess.run([*cmd, "--run-dir", str(run), "--resume"], env=env, capture_output=True, text=True,
                             encoding="utf-8", errors="replace")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step" in resumed.stdout
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["ddpm", "unet_cnn"])  # DistributedDataParallel / explicit all-reduce paths
def test_torchrun_two_cpu_processes(method, cases, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "MRtoCTSynthesis")}
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000 + (7 if method == "ddpm" else 0)), str(ROOT / "training" / "train.py"),
           *(_train_args(method, cases, run, 2)[1:])]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = read_metadata(run / "model.safetensors")
    assert meta["training"]["world_size"] == 2 and meta["training"]["step"] == 2
