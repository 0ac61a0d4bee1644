"""The Slicer module's pure-Python side (MRtoCTSynthesisLib.slicer.bridge), tested without Slicer.

Command lines are parsed back with the engine's own argparse parser, so every flag the module passes
really exists. Geometry is checked against SimpleITK, which serves as an independent reference. The
subprocess path the module uses (EngineProcess, engine_environment, progress and error parsing,
cancel) is run here against the real engine.
"""

import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import rotation_direction

from MRtoCTSynthesisLib.apps.cli import build_parser
from MRtoCTSynthesisLib.apps.cli import main as cli_main
from MRtoCTSynthesisLib.slicer import bridge as sb

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MRtoCTSynthesis"
PY = sys.executable


def _parse(argv):
    """Parse a built command line with the engine's parser (argv[0:3] = python -m module)."""
    assert argv[:3] == [PY, "-m", sb.ENGINE_MODULE]
    return build_parser().parse_args(argv[3:])


def _subcommand_options(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices[name]._option_string_actions)


# ================================================================================== command lines
def test_synthesize_command_round_trips_through_engine_parser(tmp_path):
    argv = sb.build_synthesize_command(PY, tmp_path / "mri.nii.gz", tmp_path / "m.safetensors", tmp_path / "sct.nii.gz",
                                       tmp_path / "std.nii.gz", method="ddpm", sampler="ddim", steps=25, samples=4,
                                       seed=7, device="cpu", info_json=tmp_path / "run.json")
    args = _parse(argv)
    assert args.command == "synthesize"
    assert args.func.__module__.endswith("apps.commands.synthesize") and args.func.__name__ == "run"
    assert Path(args.mri) == tmp_path / "mri.nii.gz" and Path(args.model) == tmp_path / "m.safetensors"
    assert Path(args.out_ct) == tmp_path / "sct.nii.gz" and Path(args.out_std) == tmp_path / "std.nii.gz"
    assert (args.sampler, args.steps, args.samples, args.seed, args.device) == ("ddim", 25, 4, 7, "cpu")
    assert Path(args.info_json) == tmp_path / "run.json"


def test_synthesize_command_defaults_are_left_to_the_engine(tmp_path):
    argv = sb.build_synthesize_command(PY, "mri.nii.gz", "m.safetensors", "sct.nii.gz", method="ddpm", sampler="",
                                       steps=0, samples=1)
    args = _parse(argv)
    assert args.sampler is None and args.steps is None and args.out_std is None
    assert "--steps" not in argv and "--sampler" not in argv
    # a reference CT is not a synthesis input for methods without measurements
    argv = sb.build_synthesize_command(PY, "mri.nii.gz", "m.safetensors", "sct.nii.gz", method="ddpm",
                                       reference_ct="ct.nii.gz", projections=30, noise_sigma=0.1, nsmi="noisy")
    assert not {"--ct", "--projections", "--noise-sigma", "--nsmi"} & set(argv)
    _parse(argv)


@pytest.mark.parametrize("bad", [dict(samples=0), dict(steps=-1)])
def test_synthesize_command_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        sb.build_synthesize_command(PY, "a", "b", "c", **bad)


def test_ddmm_synth_flags_only_with_ddmm_and_need_a_reference():
    with pytest.raises(ValueError, match="reference CT"):
        sb.build_synthesize_command(PY, "mri.nii.gz", "m.safetensors", "sct.nii.gz", method="ddmm_synth")
    with pytest.raises(ValueError):
        sb.build_synthesize_command(PY, "mri.nii.gz", "m.safetensors", "sct.nii.gz", method="ddmm_synth",
                                    reference_ct="ct.nii.gz", nsmi="sometimes")
    argv = sb.build_synthesize_command(PY, "mri.nii.gz", "m.safetensors", "sct.nii.gz", method="ddmm_synth",
                                       reference_ct="ct.nii.gz", projections=23, noise_sigma=0.05, nsmi="noisy")
    i = argv.index("--ct")
    assert argv[i + 1] == "ct.nii.gz"
    assert argv[argv.index("--projections") + 1] == "23"
    assert float(argv[argv.index("--noise-sigma") + 1]) == 0.05
    assert argv[argv.index("--nsmi") + 1] == "noisy"
    # optional values are left to the engine
    argv = sb.build_synthesize_command(PY, "mri.nii.gz", "m.safetensors", "sct.nii.gz", method="ddmm_synth",
                                       reference_ct="ct.nii.gz")
    assert "--ct" in argv and not {"--projections", "--noise-sigma", "--nsmi"} & set(argv)


def test_ddmm_synth_flags_exist_in_engine_parser():
    known = _subcommand_options("synthesize")
    missing = {"--ct", "--projections", "--noise-sigma", "--nsmi"} - known
    if missing:
        pytest.skip(f"the engine's synthesize parser does not have {sorted(missing)} yet (DDMM-Synth is being added)")
    argv = sb.build_synthesize_command(PY, "mri.nii.gz", "m.safetensors", "sct.nii.gz", method="ddmm_synth",
                                       reference_ct="ct.nii.gz", projections=23, noise_sigma=0.05, nsmi="noiseless")
    args = _parse(argv)
    assert Path(args.ct) == Path("ct.nii.gz")
    assert args.projections == 23 and math.isclose(args.noise_sigma, 0.05) and args.nsmi == "noiseless"


def test_register_and_evaluate_commands_round_trip(tmp_path):
    args = _parse(sb.build_register_command(PY, "ct.nii.gz", "mr.nii.gz", "reg.nii.gz", transform="t.tfm",
                                            mode="rigid", seed=3))
    assert (args.command, args.fixed, args.moving, args.out, args.transform, args.mode, args.seed) == \
        ("register", "ct.nii.gz", "mr.nii.gz", "reg.nii.gz", "t.tfm", "rigid", 3)
    for mode in sb.REGISTRATION_MODES:  # every mode the GUI offers is one the engine accepts
        assert _parse(sb.build_register_command(PY, "a", "b", "c", mode=mode)).mode == mode
    with pytest.raises(ValueError):
        sb.build_register_command(PY, "a", "b", "c", mode="deformable")
    args = _parse(sb.build_evaluate_command(PY, "sct.nii.gz", "ct.nii.gz", mask="m.nii.gz", json_out="x.json",
                                            per_slice=True))
    assert (args.command, args.pred, args.ref, args.mask, args.json, args.per_slice) == \
        ("evaluate", "sct.nii.gz", "ct.nii.gz", "m.nii.gz", "x.json", True)
    args = _parse(sb.build_evaluate_command(PY, "sct.nii.gz", "ct.nii.gz"))
    assert args.mask is None and args.json is None


def test_gui_choices_are_engine_choices():
    parser_opts = build_parser()
    sub = next(a for a in parser_opts._actions if a.__class__.__name__ == "_SubParsersAction")
    synth = sub.choices["synthesize"]._option_string_actions
    for method in sb.methods():
        assert set(sb.valid_samplers(method)) <= set(synth["--sampler"].choices)
    for device, _ in sb.device_choices(None) + [("cuda:1", ""), ("mps", "")]:
        _parse(sb.build_synthesize_command(PY, "a", "b", "c", device=device))
    assert set(sb.SAMPLER_LABELS) >= set(synth["--sampler"].choices)


def test_python_executable_and_environment(tmp_path):
    assert sb.python_executable(which=lambda n: "/opt/Slicer/bin/PythonSlicer" if n == "PythonSlicer" else None) \
        == "/opt/Slicer/bin/PythonSlicer"
    fake = tmp_path / "bin" / "SlicerApp-real"
    fake.parent.mkdir()
    fake.write_text("")
    (fake.parent / "PythonSlicer").write_text("")
    assert sb.python_executable(which=lambda n: None, executable=str(fake), platform="linux") == \
        str(fake.parent / "PythonSlicer")
    assert sb.python_executable(which=lambda n: None, executable=str(tmp_path / "python3"), platform="linux") == \
        str(tmp_path / "python3")
    env = sb.engine_environment({"PYTHONPATH": os.pathsep.join(["/a", str(sb.MODULE_DIR)])})
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[0] == str(sb.MODULE_DIR) and parts.count(str(sb.MODULE_DIR)) == 1 and "/a" in parts
    assert env["PYTHONUNBUFFERED"] == "1"
    assert sb.MODULE_DIR == MODULE_DIR.resolve()
    assert (sb.MODULE_DIR / "MRtoCTSynthesisLib" / "apps" / "cli.py").is_file()


# ============================================================================== progress / errors
def test_progress_lines_from_the_engines_printer(capsys):
    from MRtoCTSynthesisLib.apps.args import progress_printer

    progress_printer()(0.42, "slices 10/24, samples 40/96, 12.3 s elapsed, ~17 s left")
    progress_printer()(1.0, "slices 24/24, samples 96/96, 30.0 s elapsed, ~0 s left")
    lines = capsys.readouterr().err.splitlines()
    f, msg = sb.parse_progress_line(lines[0])
    assert f == pytest.approx(0.42) and msg.startswith("slices 10/24")
    assert sb.progress_text(msg) == "slices 10/24 - 17 s left"
    assert sb.parse_progress_line(lines[1])[0] == 1.0


def test_progress_messages_of_a_real_synthesis():
    """The texts inference.py reports are the ones progress_text understands."""
    import torch

    from MRtoCTSynthesisLib.io.volume import Volume, make_geometry
    from MRtoCTSynthesisLib.models.methods import create_model
    from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize

    torch.manual_seed(0)
    model = create_model("ddpm", 16)
    mri = Volume(np.random.default_rng(0).random((3, 12, 10)).astype(np.float32) * 100, make_geometry((10, 12, 3)))
    seen = []
    synthesize(mri, model, SynthesisOptions(sampler="ddim", steps=2, samples=2, batch_size=2, device="cpu"),
                      progress=lambda f, m: seen.append((f, m)))
    assert seen[-1][0] == 1.0
    for i, (f, m) in enumerate(seen):
        parsed = sb.parse_progress_line(f"PROGRESS {f:.4f} {m}")
        assert parsed == (pytest.approx(f, abs=1e-4), m)
        text = sb.progress_text(m)
        assert text.startswith(f"slices {i + 1}/3") and text.endswith(" left"), text


@pytest.mark.parametrize("line", ["", "registered x onto y", "PROGRESS", "PROGRESS abc x", "PROGRESS nan x",
                                  "  progress 0.5 lower case", "XPROGRESS 0.5 x"])
def test_non_progress_lines(line):
    assert sb.parse_progress_line(line) is None


def test_progress_is_clamped_and_message_optional():
    assert sb.parse_progress_line("PROGRESS 1.7") == (1.0, "")
    assert sb.parse_progress_line("PROGRESS -0.2 starting") == (0.0, "starting")
    assert sb.parse_progress_line("PROGRESS 0.500 rigid level 2/3\r") == (0.5, "rigid level 2/3")
    assert sb.progress_text("rigid level 2/3") == "rigid level 2/3"
    assert sb.progress_text("slices 1/2, ~4000 s left") == "slices 1/2 - 1 h 07 min left"
    assert sb.format_seconds(59.6) == "60 s" and sb.format_seconds(150) == "2 min"


def test_parse_error_of_the_real_cli(tmp_path, capsys):
    rc = cli_main(["synthesize", "--mri", str(tmp_path / "missing.nii.gz"), "--model", str(tmp_path / "m.safetensors"),
                   "--out-ct", str(tmp_path / "sct.nii.gz")])
    err = capsys.readouterr().err
    assert rc == sb.EXIT_INPUT_ERROR
    msg = sb.parse_error(err)
    first, fix = msg.splitlines()[0], msg.splitlines()[-1]
    assert first.startswith("error: MRI file") and "missing.nii.gz" in first and "does not exist" in first
    assert fix.startswith("Fix: ")
    assert sb.describe_exit(rc, err) == ("input_error", msg)


def test_parse_error_of_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["synthesize", "--mri", "x.nii.gz"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    msg = sb.parse_error(err)
    assert msg.startswith("error: the following arguments are required") and "--model" in msg


def test_parse_error_multiline_problem_and_fallbacks():
    text = textwrap.dedent("""\
        PROGRESS 0.1000 slices 1/10
        error: synthetic CT and reference CT are on different grids:
            synthetic CT: size 10x10x4, spacing 1x1x1 mm
            reference CT: size 12x10x4, spacing 1x1x1 mm
          Fix: register/resample reference CT onto synthetic CT first
        """)
    assert sb.parse_error(text) == ("error: synthetic CT and reference CT are on different grids:\n"
                                    "synthetic CT: size 10x10x4, spacing 1x1x1 mm\n"
                                    "reference CT: size 12x10x4, spacing 1x1x1 mm\n"
                                    "Fix: register/resample reference CT onto synthetic CT first")
    crash = "PROGRESS 0.5 x\nTraceback (most recent call last):\n  File \"a.py\", line 1\nRuntimeError: boom\n"
    assert sb.parse_error(crash).splitlines()[-1] == "RuntimeError: boom"
    assert "PROGRESS" not in sb.parse_error(crash)
    assert sb.parse_error("") == ""
    cancelled = "cancelled by the user; no output was written"
    assert sb.parse_error(cancelled) == cancelled


def test_describe_exit():
    assert sb.describe_exit(0, "")[0] == "ok"
    assert sb.describe_exit(130, "cancelled: synthesis cancelled")[0] == "cancelled"
    assert sb.describe_exit(-15, "")[0] == "cancelled"
    status, msg = sb.describe_exit(1, "Traceback ...\nMemoryError: out of memory")
    assert status == "failed" and "exit status 1" in msg and "MemoryError" in msg


# ========================================================================= process: run and cancel
def test_engine_process_runs_the_real_cli_and_collects_output(tmp_path):
    geo = dict(spacing=(1.5, 1.0, 2.0), origin=(3.0, -4.0, 5.0), direction=rotation_direction(10, 0, 20))
    ref = np.random.default_rng(1).normal(0, 200, (4, 20, 18)).astype(np.float32)
    for name, arr in (("ct", ref), ("sct", ref + 25.0)):
        sitk.WriteImage(sb.sitk_image_from_array(arr, sb.ijk_to_ras_from_geometry(**geo)),
                        str(tmp_path / f"{name}.nii.gz"))
    argv = sb.build_evaluate_command(PY, tmp_path / "sct.nii.gz", tmp_path / "ct.nii.gz", json_out=tmp_path / "m.json")
    env = dict(os.environ, **sb.engine_environment())
    proc = sb.EngineProcess.start(argv, cwd=str(tmp_path), env=env)
    deadline = time.monotonic() + 120
    collected = []
    while not proc.finished and time.monotonic() < deadline:  # what the module's QTimer does
        collected += proc.poll()
        time.sleep(0.02)
    collected += proc.poll()
    assert proc.finished and proc.returncode == 0, proc.output()
    assert any("metrics written" in line for line in collected)
    assert sb.describe_exit(proc.returncode, proc.output())[0] == "ok"
    rows = dict(sb.metrics_table_rows(json.loads((tmp_path / "m.json").read_text())))
    assert rows["MAE (HU)"] == "25.0" and rows["ME (HU)"] == "+25.0"


def test_engine_process_end_to_end_synthesis(tmp_path):
    """The module's whole call path outside Slicer: files in, engine subprocess, progress, files out."""
    import torch

    from MRtoCTSynthesisLib.models.methods import create_model, save_model

    torch.manual_seed(0)
    save_model(create_model("ddpm", 16), tmp_path / "tiny.safetensors")
    assert sb.read_checkpoint_summary(tmp_path / "tiny.safetensors")["method"] == "ddpm"
    m = sb.ijk_to_ras_from_geometry((2.0, 1.5, 3.0), (10.0, -20.0, 30.0), rotation_direction(15, -5, 30))
    mri = np.random.default_rng(2).random((3, 14, 11)).astype(np.float32) * 300
    sitk.WriteImage(sb.sitk_image_from_array(mri, m), str(tmp_path / "mri.nii.gz"))
    argv = sb.build_synthesize_command(PY, tmp_path / "mri.nii.gz", tmp_path / "tiny.safetensors",
                                       tmp_path / "sct.nii.gz", tmp_path / "std.nii.gz", method="ddpm",
                                       sampler="ddim", steps=2, samples=2, seed=1, device="cpu")
    proc = sb.EngineProcess.start(argv, cwd=str(sb.MODULE_DIR), env=dict(os.environ, **sb.engine_environment()))
    assert proc.wait(timeout=300) == 0, proc.output()
    progress = [p for p in map(sb.parse_progress_line, proc.lines) if p]
    assert progress and progress[-1][0] == 1.0
    for name in ("sct", "std"):
        arr, matrix = sb.array_and_ijk_to_ras_from_sitk(sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")))
        assert arr.shape == mri.shape
        assert sb.same_grid(arr.shape, matrix, mri.shape, m, tol_mm=1e-3)


def test_engine_process_end_to_end_ddmm_synth(tmp_path):
    """The DDMM-Synth command the module builds runs: the reference CT's projections are embedded."""
    missing = {"--ct", "--projections", "--noise-sigma", "--nsmi"} - _subcommand_options("synthesize")
    if missing:
        pytest.skip(f"the engine's synthesize parser does not have {sorted(missing)} yet")
    import torch

    from MRtoCTSynthesisLib.models.methods import create_model, save_model

    torch.manual_seed(0)
    save_model(create_model("ddpm", 16), tmp_path / "tiny.safetensors")
    m = sb.ijk_to_ras_from_geometry((3.0, 3.0, 4.0), (0.0, 0.0, 0.0), rotation_direction(0, 0, 10))
    rng = np.random.default_rng(3)
    mri = rng.random((3, 16, 16)).astype(np.float32) * 300
    ct = rng.normal(0, 300, (3, 16, 16)).astype(np.float32)
    sitk.WriteImage(sb.sitk_image_from_array(mri, m), str(tmp_path / "mri.nii.gz"))
    sitk.WriteImage(sb.sitk_image_from_array(ct, m), str(tmp_path / "ct.nii.gz"))
    argv = sb.build_synthesize_command(PY, tmp_path / "mri.nii.gz", tmp_path / "tiny.safetensors",
                                       tmp_path / "sct.nii.gz", tmp_path / "std.nii.gz", method="ddmm_synth",
                                       sampler="ddim", steps=2, samples=1, device="cpu",
                                       info_json=tmp_path / "run.json",
                                       reference_ct=tmp_path / "ct.nii.gz", projections=12, noise_sigma=0.0,
                                       nsmi="noiseless")
    proc = sb.EngineProcess.start(argv, cwd=str(sb.MODULE_DIR), env=dict(os.environ, **sb.engine_environment()))
    assert proc.wait(timeout=300) == 0, proc.output()
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["method"].startswith("ddmm_synth") and info["measurements"]["n_projections"] == 12
    arr, matrix = sb.array_and_ijk_to_ras_from_sitk(sitk.ReadImage(str(tmp_path / "sct.nii.gz")))
    assert sb.same_grid(arr.shape, matrix, mri.shape, m)


_TREE_SCRIPT = textwrap.dedent("""\
    import os, signal, subprocess, sys, time
    def on_term(signum, frame):
        print("cleaned up", flush=True)
        sys.exit(130)
    signal.signal(signal.SIGTERM, on_term)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(f"child {child.pid}", flush=True)
    print("PROGRESS 0.1000 slices 1/10, ~99 s left", file=sys.stderr, flush=True)
    time.sleep(120)
    """)


def _pid_alive(pid):
    return sb._alive(pid)


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX signals")
@pytest.mark.parametrize("use_psutil", [False, None])
def test_cancel_kills_the_whole_tree_politely_first(tmp_path, use_psutil):
    if use_psutil is None:
        pytest.importorskip("psutil", reason="psutil is not installed (Slicer may ship it; the fallback is tested)")
    proc = sb.EngineProcess.start([PY, "-c", _TREE_SCRIPT])
    deadline = time.monotonic() + 30
    child = None
    while child is None and time.monotonic() < deadline:
        for line in proc.poll():
            if line.startswith("child "):
                child = int(line.split()[1])
        time.sleep(0.02)
    assert child and _pid_alive(child)
    while not any(sb.parse_progress_line(line) for line in proc.lines) and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.02)
    t0 = time.monotonic()
    if use_psutil is False:
        sb.kill_process_tree(proc.pid, timeout=5, popen=proc.popen, use_psutil=False)
        proc.cancelled = True
    else:
        proc.cancel(timeout=5)
    assert proc.wait(timeout=10) is not None
    assert time.monotonic() - t0 < 10
    assert proc.cancelled and proc.finished
    assert proc.returncode == 130 and "cleaned up" in proc.output()  # SIGTERM reached the engine first
    deadline = time.monotonic() + 5
    while _pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(child), "the grandchild survived the cancel"


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX signals")
def test_kill_escalates_to_sigkill(tmp_path):
    stubborn = ("import signal, time, sys\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "print('ready', flush=True)\ntime.sleep(60)\n")
    proc = sb.EngineProcess.start([PY, "-c", stubborn])
    deadline = time.monotonic() + 30
    while "ready" not in proc.lines and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.02)
    sb.kill_process_tree(proc.pid, timeout=0.5, popen=proc.popen, use_psutil=False)
    assert proc.wait(timeout=10) == -9


# ======================================================================= methods and checkpoints
def test_methods_come_from_the_engines_info_document():
    """The module's lists are what ``mrtoct info --json`` says, which is what the registries hold."""
    from MRtoCTSynthesisLib.apps.commands.info import INFO_FORMAT, engine_info
    from MRtoCTSynthesisLib.models.methods import METHODS

    info = engine_info()
    assert info["format"] == INFO_FORMAT
    assert sb.methods(info) == list(METHODS)
    assert {"ddpm", "score_sde"} <= set(sb.methods(info))
    for name, cls in METHODS.items():
        assert sb.valid_samplers(name, info) == list(cls.valid_samplers)
        assert sb.default_sampler(name, info) == cls.default_sampler
        assert sb.default_sampler(name, info) in sb.valid_samplers(name, info)
    assert sb.valid_samplers("no-such-method", info) == []
    # an engine that registers fewer methods offers fewer: the document wins over the fallback table
    one = {"methods": [{"name": "ddpm", "label": "x", "samplers": ["ddim"], "default_sampler": "ddim"}]}
    assert sb.methods(one) == ["ddpm"] and sb.valid_samplers("ddpm", one) == ["ddim"]


def test_info_and_devices_json_from_the_engine_process():
    """What the module runs: one JSON line on stdout, found even with other lines around it (stderr is merged)."""
    env = dict(os.environ, PYTHONPATH=str(MODULE_DIR), OMP_NUM_THREADS="1")
    for argv, fmt in ((sb.build_info_command(sys.executable), "mrtoct-engine-info"),
                      (sb.build_devices_command(sys.executable), "mrtoct-devices")):
        out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(MODULE_DIR), timeout=120)
        assert out.returncode == 0, out.stderr
        doc = sb.parse_json_output("warning: something\n" + out.stdout + "\nPROGRESS 1.0 done\n", fmt)
        assert doc is not None and doc["format"] == fmt, out.stdout[:300]
        if fmt == "mrtoct-devices":
            import torch

            ids = [d["id"] for d in doc["devices"]]
            assert ids[-1] == "cpu" and ids.count("cpu") == 1
            assert sum(i.startswith("cuda:") for i in ids) == (torch.cuda.device_count() if torch.cuda.is_available()
                                                                else 0)
            assert doc["auto"] in ids
            values = [v for v, _ in sb.device_choices(doc)]
            assert values[0] == "auto" and values[1:] == ids
        else:
            assert [m["name"] for m in doc["models"]] == [m["name"] for m in sb.load_model_catalog(
                MODULE_DIR / "Resources" / "models.json")]
    assert sb.parse_json_output("no json here\n{broken") is None
    assert sb.parse_json_output('{"format": "a"}\n', "b") is None


def test_fallback_table_agrees_with_the_engine():
    """Before torch is installed the module offers FALLBACK_METHODS; it must say what the engine says."""
    from MRtoCTSynthesisLib.models.methods import METHODS

    for name, cls in METHODS.items():
        assert name in sb.FALLBACK_METHODS, f"add {name!r} to slicer_bridge.FALLBACK_METHODS"
        entry = sb.FALLBACK_METHODS[name]
        assert list(entry["samplers"]) == list(cls.valid_samplers), name
        assert entry["default_sampler"] == cls.default_sampler, name
    assert sb.methods() == list(sb.FALLBACK_METHODS)
    # DDMM-Synth needs samplers that expose x0 at each step
    assert set(sb.valid_samplers("ddmm_synth")) == {"ddpm", "ddim", "dpmpp"}
    assert sb.uses_measurements("ddmm_synth") and not sb.uses_measurements("ddpm") and not sb.uses_measurements(None)


def test_fixed_step_samplers_refuse_steps_in_the_engine():
    """The GUI leaves --steps out for these samplers because the engine refuses them."""
    from MRtoCTSynthesisLib.errors import InputError
    from MRtoCTSynthesisLib.models.methods import METHODS, create_model

    for name, cls in METHODS.items():
        for sampler in cls.valid_samplers:
            assert sb.sampler_takes_steps(sampler) == (sampler not in ("syndiff", "direct")), sampler
    fixed = [name for name, cls in METHODS.items() if set(cls.valid_samplers) <= sb.FIXED_STEP_SAMPLERS]
    if not fixed:
        pytest.skip("the engine has no fixed-step methods")
    model = create_model(fixed[-1], 16)
    with pytest.raises(InputError, match="steps"):
        model.make_sampler(None, 7)
    model.make_sampler(None, None)


def test_checkpoint_method_compatibility():
    assert sb.checkpoint_matches_method("ddpm", "ddpm")
    assert not sb.checkpoint_matches_method("ddpm", "score_sde")
    assert sb.checkpoint_matches_method("ddmm_synth", "ddpm")
    assert sb.checkpoint_matches_method("ddpm", None)


def test_read_checkpoint_summary_without_torch(tmp_path):
    import torch

    from MRtoCTSynthesisLib.models.methods import create_model, save_model

    torch.manual_seed(0)
    path = save_model(create_model("score_sde", 16, context=1), tmp_path / "s.safetensors")
    summary = sb.read_checkpoint_summary(path)
    assert summary["method"] == "score_sde" and summary["image_size"] == 16 and summary["context_slices"] == 1
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    for name in ("junk", "empty", "plain", "missing"):
        assert sb.read_checkpoint_summary(tmp_path / f"{name}.safetensors") is None


def test_bridge_imports_without_torch_vtk_or_slicer():
    code = ("import sys; import MRtoCTSynthesisLib.slicer.bridge, MRtoCTSynthesisLib.slicer.mrml; "
            "bad = [m for m in ('torch', 'SimpleITK', 'vtk', 'slicer', 'qt', 'psutil') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, **sb.engine_environment()))
    assert res.returncode == 0, res.stdout + res.stderr


# ======================================================================================== geometry
def _random_indices(size, n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, np.asarray(size) - 0.5, size=(n, 3))


@pytest.mark.parametrize("flip", [False, True])
def test_ijk_to_ras_matches_simpleitk(oblique_image, flip):
    img = oblique_image
    if flip:  # a left-handed direction matrix (mirrored k axis)
        d = np.asarray(img.GetDirection()).reshape(3, 3).copy()
        d[:, 2] *= -1
        img.SetDirection(tuple(d.ravel()))
    m = sb.ijk_to_ras_from_geometry(img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    for ijk in _random_indices(img.GetSize()):
        lps = np.asarray(img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in ijk)))
        ras = m @ np.r_[ijk, 1.0]
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)
        assert ras[3] == 1.0
    # integer voxel centres too (TransformIndexToPhysicalPoint)
    for ijk in [(0, 0, 0), (12, 9, 6), (3, 7, 2)]:
        lps = np.asarray(img.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose((m @ np.r_[ijk, 1.0])[:3], sb.lps_to_ras_matrix()[:3, :3] @ lps, atol=1e-9)


def test_geometry_round_trip(oblique_image):
    img = oblique_image
    m = sb.ijk_to_ras_from_geometry(img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    spacing, origin, direction = sb.geometry_from_ijk_to_ras(m)
    np.testing.assert_allclose(spacing, img.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(origin, img.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(direction, img.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(sb.ijk_to_ras_from_geometry(spacing, origin, direction), m, atol=1e-12)
    np.testing.assert_array_equal(sb.lps_to_ras_matrix() @ sb.lps_to_ras_matrix(), np.eye(4))


def test_geometry_rejects_degenerate_matrices():
    with pytest.raises(ValueError):
        sb.geometry_from_ijk_to_ras(np.eye(3))
    bad = np.eye(4)
    bad[:, 1] = 0
    bad[3, 3] = 1
    with pytest.raises(ValueError):
        sb.geometry_from_ijk_to_ras(bad)
    persp = np.eye(4)
    persp[3, 0] = 0.1
    with pytest.raises(ValueError):
        sb.geometry_from_ijk_to_ras(persp)


def test_sitk_image_round_trip_and_engine_reads_same_geometry(oblique_image, tmp_path):
    from MRtoCTSynthesisLib.io.volume import read_volume

    arr = sitk.GetArrayFromImage(oblique_image)
    m = sb.ijk_to_ras_from_geometry(oblique_image.GetSpacing(), oblique_image.GetOrigin(), oblique_image.GetDirection())
    img = sb.sitk_image_from_array(arr, m)
    back, m2 = sb.array_and_ijk_to_ras_from_sitk(img)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(m2, m, atol=1e-12)
    # through a NIfTI file, as the module exchanges volumes with the engine
    sitk.WriteImage(img, str(tmp_path / "x.nii.gz"))
    vol = read_volume(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(vol.array, arr)
    m3 = sb.ijk_to_ras_from_geometry(vol.geometry.spacing, vol.geometry.origin, vol.geometry.direction)
    assert sb.same_grid(arr.shape, m3, arr.shape, m, tol_mm=1e-3)
    assert sb.sitk_image_from_array(np.zeros((2, 3, 4), bool), m).GetPixelID() == sitk.sitkUInt8
    with pytest.raises(ValueError):
        sb.sitk_image_from_array(np.zeros((3, 4)), m)


def test_same_grid():
    m = sb.ijk_to_ras_from_geometry((1.0, 2.0, 3.0), (0.0, 0.0, 0.0), rotation_direction())
    assert sb.same_grid((4, 5, 6), m, (4, 5, 6), m)
    shifted = m.copy()
    shifted[0, 3] += 0.01
    assert not sb.same_grid((4, 5, 6), m, (4, 5, 6), shifted)
    assert sb.same_grid((4, 5, 6), m, (4, 5, 6), shifted, tol_mm=0.05)
    assert not sb.same_grid((4, 5, 6), m, (4, 5, 7), m)
    rotated = sb.ijk_to_ras_from_geometry((1.0, 2.0, 3.0), (0.0, 0.0, 0.0), rotation_direction(20.5))
    assert not sb.same_grid((4, 5, 6), m, (4, 5, 6), rotated)


# ================================================================================ results and UI
def test_metrics_table_rows_from_engine_evaluate():
    from MRtoCTSynthesisLib.pipeline.metrics import evaluate

    rng = np.random.default_rng(0)
    ref = rng.normal(0, 300, (12, 24, 24))
    res = evaluate(ref + 10.0, ref)
    rows = sb.metrics_table_rows(json.loads(json.dumps(res, default=float)))
    names = [r[0] for r in rows]
    assert names[:5] == ["MAE (HU)", "ME (HU)", "PSNR (dB)", "SSIM", "MS-SSIM"]
    values = dict(rows)
    assert values["MAE (HU)"] == "10.0" and values["ME (HU)"] == "+10.0"
    assert float(values["PSNR (dB)"]) > 40 and 0.9 < float(values["SSIM"]) <= 1.0
    assert all(isinstance(v, str) for v in values.values()) and "per_slice" not in values
    assert sb.metrics_table_rows(json.dumps({"metrics": {"mae_hu": 5, "ssim": float("nan")}})) == \
        [("MAE (HU)", "5.0"), ("SSIM", "n/a")]
    assert sb.metrics_table_rows({"psnr_db": float("inf")}) == [("PSNR (dB)", "inf")]


def test_compare_layout_xml():
    xml = sb.compare_layout_xml(sb.COMPARE_VIEWS)
    root = ET.fromstring(xml)
    assert root.tag == "layout" and root.get("type") == "horizontal"
    views = root.findall("./item/view")
    assert [v.get("singletontag") for v in views] == [t for t, _, _ in sb.COMPARE_VIEWS]
    assert all(v.get("class") == "vtkMRMLSliceNode" for v in views)
    labels = [v.find("./property[@name='viewlabel']").text for v in views]
    assert labels == ["MR", "sCT", "CT", "std"]
    assert len(set(t for t, _, _ in sb.COMPARE_VIEWS)) == 4
    assert len(ET.fromstring(sb.compare_layout_xml(sb.COMPARE_VIEWS[:2])).findall("./item")) == 2


def test_sample_data_sources(tmp_path):
    assert sb.sample_data_sources(tmp_path) == []
    for name, _ in sb.DEMO_CASE_FILES:
        (tmp_path / name).write_bytes(name.encode())
    (src,) = sb.sample_data_sources(tmp_path, thumbnail=tmp_path / "icon.png")
    assert len(src["uris"]) == len(src["fileNames"]) == len(src["nodeNames"]) == len(src["checksums"]) == 3
    for uri, (name, _), checksum in zip(src["uris"], sb.DEMO_CASE_FILES, src["checksums"]):
        assert uri.startswith("file://") and uri.endswith(name)
        assert checksum == "SHA256:" + hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    assert len(set(src["fileNames"])) == 3 and all(f.startswith("MRtoCTSynthesis-") for f in src["fileNames"])


def test_bundled_demo_case_is_registered_when_present():
    if not all((sb.DEMO_CASE_DIR / n).is_file() for n, _ in sb.DEMO_CASE_FILES):
        pytest.skip(f"the bundled demo case is not in {sb.DEMO_CASE_DIR} yet")
    (src,) = sb.sample_data_sources()
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    for uri in src["uris"]:
        assert Path(url2pathname(urlparse(uri).path)).is_file()


def test_model_catalog():
    """Every bundled model is there with the size, SHA-256 and method the catalog gives (checked independently:
    hashlib over the file, the method from the safetensors header); no entry has a made-up URL."""
    import hashlib

    path = MODULE_DIR / "Resources" / "models.json"
    models = sb.load_model_catalog(path)
    assert models and len({m["name"] for m in models}) == len(models)
    bundled = [m for m in models if m["bundled"]]
    assert sb.DEMO_MODEL in [(MODULE_DIR / m["path"]).resolve() for m in bundled]
    for m in bundled:
        f = (MODULE_DIR / m["path"]).resolve()
        assert f.is_file(), m["name"]
        digest, size = hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_size
        assert (m["sha256"], m["size"]) == (digest, size), f'{m["name"]}: "sha256": "{digest}", "size": {size}'
        assert sb.read_checkpoint_summary(f)["method"] == m["method"], m["name"]
        assert m["url"] is None
    for m in models:
        assert m["url"] is None or (m["url"].startswith("https://") and "example" not in m["url"]), m


@pytest.mark.parametrize("change, problem", [
    (lambda m: m.pop("sha256"), "lacks sha256"),
    (lambda m: m.update(method="nope"), "unknown method"),
    (lambda m: m.update(sha256="ABC"), "sha256"),
    (lambda m: m.update(bundled=False, url=None, availability=""), "not published yet"),
    (lambda m: m.update(bundled=False, url="http://insecure.invalid/x"), "https"),
    (lambda m: m.update(path="/abs/model.safetensors"), "relative"),
    (lambda m: m.update(training_spacing_mm=[1, 2]), "training_spacing_mm"),
])
def test_model_catalog_rejects_bad_entries(tmp_path, change, problem):
    from MRtoCTSynthesisLib.errors import InputError

    doc = json.loads((MODULE_DIR / "Resources" / "models.json").read_text(encoding="utf-8"))
    change(doc["models"][0])
    bad = tmp_path / "models.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError, match=problem):
        sb.load_model_catalog(bad)
    unpublished = dict(doc["models"][1], bundled=False, url=None, availability="not published yet")
    unpublished.pop("path")
    ok = {"format": "mrtoct-model-catalog", "models": [unpublished]}
    bad.write_text(json.dumps(ok), encoding="utf-8")
    assert sb.load_model_catalog(bad)[0]["availability"] == "not published yet"


# ====================================================================================== dependencies
def test_requirements_file_matches_pyproject():
    import tomllib

    reqs = sb.parse_requirements((MODULE_DIR / "Resources" / "requirements.txt").read_text())
    names = {sb.requirement_name(r) for r in reqs}
    assert not names & sb.SLICER_SHIPPED, "Slicer ships these; never pip-install them into Slicer"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    engine = {sb.requirement_name(d) for d in deps}
    assert names == engine - sb.SLICER_SHIPPED
    assert {"safetensors", "pyyaml", "matplotlib", "scipy"} <= names


def test_requirements_to_install():
    versions = {"safetensors": "0.3.1", "pyyaml": "6.0.1", "scipy": "1.11.0"}
    todo = sb.requirements_to_install(["safetensors>=0.4", "PyYAML>=6.0", "matplotlib>=3.6", "scipy", "numpy>=99",
                                       "SimpleITK>=9", "torch>=99"], installed=versions.get)
    try:
        import packaging  # noqa: F401
        assert todo == ["safetensors>=0.4", "matplotlib>=3.6"]
    except ImportError:
        assert todo == ["matplotlib>=3.6"]
    assert sb.parse_requirements("# c\n\n-r other.txt\nscipy>=1.9  # x\n") == ["scipy>=1.9"]
    assert sb.requirement_name("PyYAML>=6.0") == "pyyaml" and sb.requirement_name("ruamel.yaml") == "ruamel-yaml"
    assert sb.torch_backend("cpu") == "cpu" and sb.torch_backend("auto") is None and sb.torch_backend("cuda") is None
