"""Fault injection: what a user or a machine does wrong must end in a fast, clear error with nothing lost.

Issue 17's seven faults, each reproduced the way a user meets it (the ``mrtoct`` CLI in-process through
``main([...])``, or in a subprocess where the fault needs one: a file-size limit, a byte-string argv, a killed
writer), and the "also seen" list. Every case asserts the exit status, the message (the problem and a ``Fix:``
line, no traceback), that it fails within seconds, and that no good file changed and no temporary is left.

A full disk is simulated without root with ``RLIMIT_FSIZE`` in a subprocess (a write beyond the limit fails with
``EFBIG``, exactly where a full disk fails with ``ENOSPC``; Python ignores the SIGXFSZ signal), and with a writer
patched to truncate its output silently (what ITK does on a full disk). Inputs are tiny (untrained 16-pixel
models, 8x32x32 volumes), so the whole file runs in well under a minute on one thread.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save

from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.io import atomic
from MRtoCTSynthesisLib.io.atomic import OutputWriteError, atomic_write, write_bytes_atomic
from MRtoCTSynthesisLib.io.volume import Volume, read_volume, write_volume
from MRtoCTSynthesisLib.models.methods import create_model, save_model

PREVIOUS = b"previous good result - must survive a failed run"
FAST_S = 15.0  # "fails fast": generous for a loaded 2-core CI machine; the checks themselves take milliseconds
SHAPE = (8, 32, 32)  # numpy (z, y, x)
ENGINE = Path(__file__).resolve().parents[1] / "MRtoCTSynthesis"


# ------------------------------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A good MRI and CT and untrained 16-pixel ddpm / unet_cnn checkpoints."""
    d = tmp_path_factory.mktemp("fault_inputs")
    rng = np.random.default_rng(0)
    mr = sitk.GetImageFromArray(rng.uniform(0, 800, SHAPE).astype(np.float32))
    mr.SetSpacing((2.0, 2.0, 3.0))
    ct = sitk.GetImageFromArray(rng.uniform(-1000, 1200, SHAPE).astype(np.float32))
    ct.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(mr, str(d / "mr.nii.gz"))
    sitk.WriteImage(ct, str(d / "ct.nii.gz"))
    torch.manual_seed(0)
    return {"dir": d, "mr": str(d / "mr.nii.gz"), "ct": str(d / "ct.nii.gz"),
            "ddpm": str(save_model(create_model("ddpm", 16), d / "ddpm.safetensors")),
            "unet_cnn": str(save_model(create_model("unet_cnn", 16), d / "unet_cnn.safetensors"))}


def run_cli(argv, capsys):
    """``main(argv)`` -> (exit status, stderr, seconds); argparse's SystemExit counts as an exit status."""
    capsys.readouterr()
    t0 = time.perf_counter()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err, time.perf_counter() - t0


def assert_clear_error(rc, err, seconds, needle, status=2):
    assert rc == status, f"exit status {rc}, expected {status}:\n{err}"
    assert "Traceback" not in err, err
    assert re.search(r"(^|: )error: ", err, re.M) and "\n  Fix: " in err, err
    assert re.search(needle, err, re.I | re.S), f"expected /{needle}/ in:\n{err}"
    assert seconds < FAST_S, f"took {seconds:.1f} s"


def no_temporaries(folder: Path):
    left = [p.name for p in Path(folder).iterdir() if atomic.is_our_temporary(p.name)]
    assert left == [], f"temporary files left behind: {left}"


def snapshot(*paths):
    return {Path(p): Path(p).read_bytes() for p in paths}


def assert_unchanged(before):
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} was changed"


_NEXT = "--next-case--"


def subprocess_cli(argvs, fsize_limit=None, timeout=240):
    """Run ``main(argv)`` for each argv in ONE fresh Python (importing torch once), optionally under a file-size
    limit; argv items may be bytes (passed through as the OS gives them). -> [(exit status, stderr), ...]."""
    script = textwrap.dedent(f"""
        import resource, sys
        limit = {fsize_limit!r}
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        import torch
        torch.set_num_threads(1)
        from MRtoCTSynthesisLib.apps.cli import main
        cases, argv = [], []
        for a in sys.argv[1:] + [{_NEXT!r}]:
            if a == {_NEXT!r}:
                cases.append(argv)
                argv = []
            else:
                argv.append(a)
        for i, argv in enumerate(cases):
            print(f"@@case {{i}}@@", file=sys.stderr, flush=True)
            rc = main(argv)
            print(f"@@rc {{rc}}@@", file=sys.stderr, flush=True)
    """)
    args = []
    for argv in argvs:
        args += [a if isinstance(a, bytes) else str(a) for a in argv] + [_NEXT]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ENGINE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script, *args[:-1]], capture_output=True, timeout=timeout, env=env)
    err = proc.stderr.decode("utf-8", "replace")
    found = re.findall(r"@@case (\d+)@@\n(.*?)@@rc (-?\d+)@@", err, re.S)
    assert len(found) == len(argvs), f"exit {proc.returncode}:\n{err}"
    return [(int(rc), text) for _, text, rc in found]


# ------------------------------------------------------------------------------------------ 1. full disk
def test_full_disk_during_writes_keeps_previous_outputs(inputs, tmp_path):
    """Fault 1: the disk fills while the sCT (.nii, .nii.gz) or an exported checkpoint is written. RLIMIT_FSIZE in a
    subprocess makes writes beyond 2 KiB fail with EFBIG, where a full disk fails with ENOSPC (ITK's NIfTI writer only
    prints "wrote only N of M bytes" and carries on: the verification of the written file catches it)."""
    outs = [tmp_path / "sct.nii", tmp_path / "sct.nii.gz", tmp_path / "small.safetensors"]
    for out in outs:
        out.write_bytes(PREVIOUS)
    synth = ["synthesize", "--mri", inputs["mr"], "--model", inputs["ddpm"], "--sampler", "ddim", "--steps", "1"]
    results = subprocess_cli([synth + ["--out-ct", outs[0]], synth + ["--out-ct", outs[1]],
                              ["export", "--model", inputs["ddpm"], "--out", outs[2]]], fsize_limit=2048)
    for (rc, err), what in zip(results, ("--out-ct", "--out-ct", "checkpoint")):
        assert rc == 2, err
        assert "Traceback" not in err and "\n  Fix: " in err, err
        assert re.search(rf"error: could not write {what} .*(larger than this file system or your file-size limit"
                         r"|incomplete or damaged).*previous file is unchanged", err, re.S), err
    for out in outs:
        assert out.read_bytes() == PREVIOUS
    no_temporaries(tmp_path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_silently_truncated_volume_write_is_caught(tmp_path, monkeypatch, suffix):
    """ITK does not always report a full disk: a writer that silently stops early must not replace a good file."""
    vol = Volume(np.random.default_rng(1).normal(size=SHAPE).astype(np.float32),
                 read_volume.__globals__["make_geometry"](SHAPE[::-1], (1.5, 1.5, 2.0)))
    target = tmp_path / f"sct{suffix}"
    write_volume(vol, target)
    before = snapshot(target)
    real = sitk.WriteImage

    def truncating(image, path, *a):
        real(image, path, *a)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) * 2 // 3])  # as if the disk filled up, and nobody noticed

    monkeypatch.setattr(sitk, "WriteImage", truncating)
    with pytest.raises(OutputWriteError, match=r"incomplete or damaged.*previous file is unchanged"):
        write_volume(vol.with_array(vol.array * 2), target)
    assert_unchanged(before)
    no_temporaries(tmp_path)


@pytest.mark.parametrize("code, meaning", [(errno.ENOSPC, "the disk is full"), (errno.EIO, "input/output error"),
                                           (errno.EROFS, "read-only")])
def test_write_errors_become_clear_errors(tmp_path, code, meaning):
    """ENOSPC/EIO/EROFS from the operating system, mid-write: an OutputWriteError naming it; the target untouched."""
    target = tmp_path / "model.safetensors"
    target.write_bytes(PREVIOUS)

    def failing(f, data):
        f.write(bytes(data)[:100])
        raise OSError(code, os.strerror(code))

    with pytest.raises(OutputWriteError, match=meaning) as info:
        write_bytes_atomic(target, b"x" * 10_000, writer=failing)
    assert info.value.errno == code and info.value.fix
    assert target.read_bytes() == PREVIOUS
    no_temporaries(tmp_path)


def test_silently_short_byte_write_is_caught(tmp_path):
    target = tmp_path / "results.json"
    target.write_bytes(PREVIOUS)
    with pytest.raises(OutputWriteError, match=r"incomplete .*9000 of 10000 bytes"):
        write_bytes_atomic(target, b"y" * 10_000, writer=lambda f, d: f.write(bytes(d)[:9000]))
    assert target.read_bytes() == PREVIOUS
    no_temporaries(tmp_path)


def test_truncated_png_is_caught(tmp_path):
    from MRtoCTSynthesisLib.io.atomic import verify_png

    good = tmp_path / "a.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.uint8).reshape(8, 8)), str(good))
    verify_png(good)  # a complete PNG passes
    target = tmp_path / "figure.png"
    target.write_bytes(PREVIOUS)
    with pytest.raises(OutputWriteError, match="incomplete"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(good.read_bytes()[:-20])  # cut before IEND
    assert target.read_bytes() == PREVIOUS


# ------------------------------------------------------------------------------------------ 2. export onto its input
def test_export_onto_its_own_input_is_refused(inputs, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    model.write_bytes(Path(inputs["ddpm"]).read_bytes())
    link = tmp_path / "link.safetensors"
    os.link(model, link)  # the same file under another name
    before = snapshot(model)
    for out in (model, link, tmp_path / "." / "m.safetensors"):
        rc, err, dt = run_cli(["export", "--model", model, "--out", out], capsys)
        assert_clear_error(rc, err, dt, r"--out .* is the input --model; writing it would destroy the input")
        assert_unchanged(before)
    no_temporaries(tmp_path)


def test_train_out_onto_the_runs_resumable_checkpoint_is_refused(tmp_path, capsys, tiny_phantom_cases):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.safetensors").write_bytes(PREVIOUS)
    rc, err, dt = run_cli(["train", "--data", tiny_phantom_cases, "--run-dir", run_dir, "--resume", "--steps", "1",
                           "--out", run_dir / "last.safetensors"], capsys)
    assert_clear_error(rc, err, dt, r"--out .* is the input the run's resumable checkpoint")
    assert (run_dir / "last.safetensors").read_bytes() == PREVIOUS


@pytest.mark.parametrize("command", ["register", "evaluate"])
def test_other_commands_refuse_an_output_that_is_an_input(inputs, tmp_path, capsys, command):
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(Path(inputs["ct"]).read_bytes())
    before = snapshot(ct)
    argv = (["register", "--fixed", ct, "--moving", inputs["mr"], "--out", ct] if command == "register" else
            ["evaluate", "--pred", inputs["ct"], "--ref", inputs["ct"], "--json", inputs["ct"]])
    rc, err, dt = run_cli(argv, capsys)
    assert_clear_error(rc, err, dt, r"is the input --(fixed|pred|ref)")
    assert_unchanged(before)


# ------------------------------------------------------------------------------------------ 3./4. steps and samples
@pytest.mark.parametrize("extra, needle", [
    (["--steps", "1000000000"], r"--steps 1000000000 is more than the 10000 sampling steps"),
    (["--sampler", "ddim", "--steps", "1000000000"], r"--steps 1000000000 is more than the 10000"),
    (["--sampler", "ddim", "--steps", "1001"],
     r"1001 sampling steps is more than the T = 1000 .*--steps between 1 and 1000"),
    (["--sampler", "ddpm", "--steps", "5000"], r"more than the T = 1000"),
    (["--samples", "1000000000"], r"--samples 1000000000 is more than the 10000 Monte-Carlo samples"),
    (["--batch-size", "1000000000"], r"--batch-size 1000000000 is more than the 4096"),
])
def test_absurd_counts_are_refused_before_any_work(inputs, tmp_path, capsys, extra, needle):
    out = tmp_path / "sct.nii.gz"
    out.write_bytes(PREVIOUS)
    rc, err, dt = run_cli(["synthesize", "--mri", inputs["mr"], "--model", inputs["ddpm"], "--out-ct", out, *extra],
                          capsys)
    assert_clear_error(rc, err, dt, needle)
    assert out.read_bytes() == PREVIOUS
    no_temporaries(tmp_path)


def test_batch_evaluation_bounds_counts_before_any_work(inputs, tmp_path, capsys, tiny_phantom_cases):
    for extra, needle in ((["--samples", "1000000000"], r"--samples 1000000000 is more than the 10000"),
                          (["--steps", "1000000000"], r"--steps 1000000000 is more than the 10000")):
        rc, err, dt = run_cli(["evaluate", "--models", inputs["ddpm"], "--data", tiny_phantom_cases,
                               "--out", tmp_path / "ev", *extra], capsys)
        assert_clear_error(rc, err, dt, needle)
    assert not (tmp_path / "ev").exists()


def test_sampler_step_bounds_in_the_library():
    """ddpm/ddim take at most T steps of a VP chain; every sampler at most MAX_STEPS; the grid is never built."""
    from MRtoCTSynthesisLib.errors import InputError
    from MRtoCTSynthesisLib.models.diffusion.process import VEProcess, VPProcess
    from MRtoCTSynthesisLib.models.samplers import make_sampler
    from MRtoCTSynthesisLib.models.samplers.base import MAX_STEPS

    vp = VPProcess(T=50)
    assert make_sampler("ddim", vp, 50).steps == 50
    for name in ("ddim", "ddpm"):
        with pytest.raises(InputError, match="T = 50"):
            make_sampler(name, vp, 51)
    assert make_sampler("dpmpp", vp, 200).steps == 200  # a continuous-time solver may take more than T
    assert make_sampler("ddim", VEProcess(), 2000).steps == 2000  # no discrete chain on VE
    t0 = time.perf_counter()
    for name in ("ddpm", "ddim", "em", "pc", "ode", "dpmpp"):
        with pytest.raises(InputError, match="more than"):
            make_sampler(name, VPProcess(), 10 ** 9)
        with pytest.raises(InputError, match=f"more than the {MAX_STEPS}"):
            make_sampler(name, VEProcess(), MAX_STEPS + 1)
    assert time.perf_counter() - t0 < 2.0


def test_explicit_batch_larger_than_memory_is_refused(inputs, tmp_path, capsys, monkeypatch):
    """A batch whose estimated activations exceed the free memory: refused before sampling (free memory patched
    down to 64 MiB so the test does not depend on the machine)."""
    import MRtoCTSynthesisLib.pipeline.synthesis as synthesis

    monkeypatch.setattr(synthesis, "available_memory_bytes", lambda: 64 << 20)
    out = tmp_path / "sct.nii.gz"
    rc, err, dt = run_cli(["synthesize", "--mri", inputs["mr"], "--model", inputs["ddpm"], "--out-ct", out,
                           "--samples", "100", "--batch-size", "4096", "--steps", "1", "--device", "cpu"], capsys)
    assert_clear_error(rc, err, dt, r"--batch-size 4096 would need about .* of memory .* only 64\.0 MiB")
    assert not out.exists()


# ------------------------------------------------------------------------------------------ 5. checkpoint metadata
def _edit_metadata(src: str, dst: Path, edit, keep_checksum=True) -> Path:
    """Copy a checkpoint with an edited metadata document and the same tensors (checksum kept as it was)."""
    tensors = st_load_file(src)
    with open(src, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    doc = json.loads(header["__metadata__"]["mrtoct"])
    edit(doc)
    if not keep_checksum:
        doc.pop("sha256", None)
    dst.write_bytes(st_save(tensors, metadata={"mrtoct": json.dumps(doc)}))
    return dst


@pytest.mark.parametrize("field, value, needle", [
    ("num_res_blocks", 1_000_000, r"'num_res_blocks' is 1000000, above the limit of 16"),
    ("base_channels", 16384, r"'base_channels' is 16384, above the limit of 1024"),
    ("num_res_blocks", 2, r"network config of 'denoiser' .* tensors stored for '(ema\.)?denoiser' do not match "
                          r"\(missing: "),
    ("base_channels", 32, r"do not match .*shape mismatch"),
])
def test_checkpoint_metadata_asking_for_another_network_is_refused_before_building(
        inputs, tmp_path, capsys, monkeypatch, field, value, needle):
    """Fault 5: metadata edited to describe a huge (or just another) network while the tensors stayed: refused from
    the header's tensor shapes on torch's meta device, before any real network is built."""
    import MRtoCTSynthesisLib.models.checkpoint.weights as weights

    bad = _edit_metadata(inputs["ddpm"], tmp_path / "edited.safetensors",
                         lambda doc: doc["network"]["denoiser"]["config"].__setitem__(field, value),
                         keep_checksum=False)
    built = []
    monkeypatch.setattr(weights, "build_network", lambda spec: built.append(spec))
    out = tmp_path / "sct.nii.gz"
    rc, err, dt = run_cli(["synthesize", "--mri", inputs["mr"], "--model", bad, "--out-ct", out, "--steps", "1"],
                          capsys)
    assert_clear_error(rc, err, dt, needle)
    assert built == [], "a network was built before the check"
    assert not out.exists()


def test_edited_metadata_fails_the_checksum(inputs, tmp_path, capsys):
    """The checksum covers the metadata: an edit that keeps the shapes valid (here the schedule's T) is caught."""
    bad = _edit_metadata(inputs["ddpm"], tmp_path / "edited.safetensors",
                         lambda doc: doc["process"].__setitem__("T", 10))
    rc, err, dt = run_cli(["info", "--model", bad], capsys)
    assert rc == 0, err  # info reads the header only and shows the file as it is
    rc, err, dt = run_cli(["synthesize", "--mri", inputs["mr"], "--model", bad, "--out-ct", tmp_path / "s.nii.gz",
                           "--steps", "1"], capsys)
    assert_clear_error(rc, err, dt, r"the tensors or the metadata do not match the checksum")


@pytest.mark.parametrize("depth, needle", [(200, "nested more than 64 levels"), (100_000,
                                                                                 "nested more than 64 levels")])
def test_deeply_nested_metadata_json_is_refused(inputs, tmp_path, capsys, depth, needle):
    tensors = st_load_file(inputs["ddpm"])
    bad = tmp_path / "nested.safetensors"
    bad.write_bytes(st_save(tensors, metadata={"mrtoct": "[" * depth + "]" * depth}))
    rc, err, dt = run_cli(["synthesize", "--mri", inputs["mr"], "--model", bad, "--out-ct", tmp_path / "s.nii.gz"],
                          capsys)
    assert_clear_error(rc, err, dt, needle)


# ------------------------------------------------------------------------------------------ 6. header vs data
def _nifti_header_only(path: Path, dims=(1000, 1000, 1000), data=4096, gz=False) -> Path:
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, *dims, 1, 1, 1, 1)
    struct.pack_into("<2h", h, 70, 16, 32)  # FLOAT32
    struct.pack_into("<8f", h, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", h, 108, 352.0)
    h[344:348] = b"n+1\0"
    raw = bytes(h) + b"\0" * 4 + np.random.default_rng(0).bytes(data)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True], ids=["nii", "nii.gz"])
def test_nifti_header_claiming_a_huge_volume_is_refused_without_allocating(inputs, tmp_path, capsys, gz):
    """Fault 6: 1000^3 float32 in the header, 4 KB of data: refused from the header and the file size."""
    bad = _nifti_header_only(tmp_path / ("big.nii.gz" if gz else "big.nii"), gz=gz)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    rc, err, dt = run_cli(["synthesize", "--mri", bad, "--model", inputs["ddpm"], "--out-ct", tmp_path / "s.nii.gz"],
                          capsys)
    assert_clear_error(rc, err, dt, r"header describes 1000x1000x1000 voxels \(3\.7 GiB of voxel data\) but the "
                                    r"(un)?compressed file has only")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mib < 500, f"peak memory grew by {grown_mib:.0f} MiB"


def test_volume_too_large_for_free_memory_is_refused(tmp_path, monkeypatch):
    import MRtoCTSynthesisLib.io.memory as memory
    from MRtoCTSynthesisLib.errors import InputError

    img = sitk.GetImageFromArray(np.zeros((64, 64, 64), np.float32))
    sitk.WriteImage(img, str(tmp_path / "v.nrrd"), False)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1 << 20)
    # 1 MiB of float32 voxels: SimpleITK's buffer, numpy's copy of it and the float32 volume, 3 MiB at most
    with pytest.raises(InputError, match=r"64x64x64 voxels\) would need about 3\.0 MiB of memory, but only 1\.0 MiB"):
        read_volume(tmp_path / "v.nrrd", "MRI")


# ------------------------------------------------------------------------------------------ 7. non-UTF-8 names
def test_non_utf8_names_and_odd_files_in_a_real_process(inputs, tmp_path):
    """Fault 7 the way a shell passes it (raw bytes in argv; SimpleITK used to abort the whole process after the
    computation), and inputs that are not regular files: a FIFO would block the reader forever, /dev/zero would be
    read until memory runs out. One subprocess with a timeout, so that a regression fails instead of hanging."""
    out = os.fsencode(tmp_path) + b"/sct_\xff\xfe.nii.gz"
    fifo, fifo_model = tmp_path / "pipe.nii.gz", tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    os.mkfifo(fifo_model)
    good_out = tmp_path / "s.nii.gz"
    cases = {
        "non-utf8-out": ([b"synthesize", b"--mri", inputs["mr"].encode(), b"--model", inputs["ddpm"].encode(),
                          b"--out-ct", out, b"--steps", b"1"],
                         r"error: --out-ct .*sct_.* has bytes in its name that are not valid UTF-8.*Fix: rename"),
        "mri-fifo": (["synthesize", "--mri", fifo, "--model", inputs["ddpm"], "--out-ct", good_out],
                     r"MRI file .*pipe\.nii\.gz is a named pipe \(FIFO\), not a regular file"),
        "mri-dev-zero": (["synthesize", "--mri", "/dev/zero", "--model", inputs["ddpm"], "--out-ct", good_out],
                         r"MRI file /dev/zero is a device"),
        "model-dev-zero": (["synthesize", "--mri", inputs["mr"], "--model", "/dev/zero", "--out-ct", good_out],
                           r"'/dev/zero' is a device, not a checkpoint file"),
        "model-fifo": (["info", "--model", fifo_model],
                       r"pipe\.safetensors' is a named pipe \(FIFO\), not a checkpoint"),
    }
    results = subprocess_cli([argv for argv, _ in cases.values()], timeout=120)
    for (name, (_, needle)), (rc, err) in zip(cases.items(), results):
        assert rc == 2, (name, err)
        assert "Traceback" not in err and "\n  Fix: " in err, (name, err)
        assert re.search(needle, err, re.S), (name, err)
    assert sorted(os.listdir(tmp_path)) == ["pipe.nii.gz", "pipe.safetensors"]


@pytest.mark.parametrize("flag", ["--mri", "--info-json", "--out-std"])
def test_other_non_utf8_names_are_refused(inputs, tmp_path, capsys, flag):
    bad = os.fsdecode(os.fsencode(tmp_path) + b"/x\xff" + (b".json" if flag == "--info-json" else b".nii.gz"))
    argv = {"--mri": ["--mri", bad, "--out-ct", tmp_path / "s.nii.gz"],
            "--info-json": ["--mri", inputs["mr"], "--out-ct", tmp_path / "s.nii.gz", "--info-json", bad],
            "--out-std": ["--mri", inputs["mr"], "--out-ct", tmp_path / "s.nii.gz", "--out-std", bad]}[flag]
    rc, err, dt = run_cli(["synthesize", "--model", inputs["ddpm"], "--steps", "1", *argv], capsys)
    assert_clear_error(rc, err, dt, r"has bytes in its name that are not valid UTF-8")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------ also seen: geometry
def _sheared(tmp_path: Path, suffix: str) -> Path:
    img = sitk.GetImageFromArray(np.random.default_rng(2).uniform(0, 800, SHAPE).astype(np.float32))
    p = tmp_path / f"sheared{suffix}"
    if suffix == ".nii":  # ITK's NIfTI writer orthogonalises; write the sheared sform into the header directly
        sitk.WriteImage(img, str(p))
        data = bytearray(p.read_bytes())
        struct.pack_into("<12f", data, 280, -1, -0.3, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0)
        struct.pack_into("<h", data, 254, 1)
        p.write_bytes(bytes(data))
    else:
        img.SetDirection((1, 0.3, 0, 0, 1, 0, 0, 0, 1))
        sitk.WriteImage(img, str(p))
    return p


def _with_geometry(tmp_path, name, spacing=(1.0, 1.0, 1.0), dtype=np.float32, complex_=False):
    arr = np.random.default_rng(3).uniform(1, 800, SHAPE)
    if complex_:
        arr = arr + 1j * arr
    img = sitk.GetImageFromArray(arr.astype(np.complex64 if complex_ else dtype))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(tmp_path / name))
    return tmp_path / name


GEOMETRY_CASES = {
    "sheared-nrrd": (lambda t: _sheared(t, ".nrrd"), r"direction matrix that is not orthonormal \(angles .*73\.30"),
    "sheared-mha": (lambda t: _sheared(t, ".mha"), r"not orthonormal"),
    "sheared-nifti-sform": (lambda t: _sheared(t, ".nii"), r"not orthonormal"),
    "spacing-1e-30": (lambda t: _with_geometry(t, "tiny.nii.gz", spacing=(1e-30, 1, 1)),
                      r"voxel spacing 1e-30 x 1 x 1 mm, outside the range"),
    "spacing-1e9": (lambda t: _with_geometry(t, "huge.nrrd", spacing=(1e9, 1, 1)), r"outside the range"),
    "complex-nifti": (lambda t: _with_geometry(t, "cplx.nii.gz", complex_=True), r"complex-valued voxels"),
}


@pytest.mark.parametrize("case", list(GEOMETRY_CASES), ids=list(GEOMETRY_CASES))
def test_bad_geometry_and_values_are_refused(inputs, tmp_path, capsys, case):
    build, needle = GEOMETRY_CASES[case]
    (tmp_path / "in").mkdir()
    bad = build(tmp_path / "in")
    out = tmp_path / "sct.nii.gz"
    out.write_bytes(PREVIOUS)
    rc, err, dt = run_cli(["synthesize", "--mri", bad, "--model", inputs["ddpm"], "--out-ct", out, "--steps", "1"],
                          capsys)
    assert_clear_error(rc, err, dt, needle)
    assert out.read_bytes() == PREVIOUS
    # the same checks guard every reader: register and evaluate too
    rc, err, dt = run_cli(["evaluate", "--pred", bad, "--ref", inputs["ct"]], capsys)
    assert_clear_error(rc, err, dt, needle)


# ------------------------------------------------------------------------------------------ also seen: DICOM
UID_A, UID_B = "1.2.826.0.1.3680043.2.1125.71", "1.2.826.0.1.3680043.2.1125.72"


def _dicom_series(folder: Path, positions, sizes=None, iops=None, uid=UID_A, start=0) -> Path:
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, z in enumerate(positions):
        n = sizes[k] if sizes else 16
        sl = sitk.GetImageFromArray((np.random.default_rng(k).integers(1, 800, (1, n, n))).astype(np.int16))
        sl.SetMetaData("0020|000e", uid)
        sl.SetMetaData("0020|0037", "\\".join(map(str, iops[k] if iops else (1, 0, 0, 0, 1, 0))))
        sl.SetMetaData("0020|0032", f"0\\0\\{z}")
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{uid}.{start + k + 1}")
        sl.SetMetaData("0008|0060", "MR")
        sl.SetMetaData("0028|0030", "1.5\\1.5")
        writer.SetFileName(str(folder / f"{uid[-2:]}_{start + k:03d}.dcm"))
        writer.Execute(sl)
    return folder


DICOM_CASES = {
    "gap": (dict(positions=[0, 3, 6, 12, 15]), r"not evenly spaced \(spacing 3 to 6 mm"),
    "duplicate": (dict(positions=[0, 3, 3, 6, 9]), r"1 duplicate slice position"),
    "mixed-orientation": (dict(positions=[0, 3, 6, 9, 12], iops=[(1, 0, 0, 0, 1, 0)] * 4 + [(0, 1, 0, 0, 0, -1)]),
                          r"mixes 2 slice orientations"),
    "mixed-size": (dict(positions=[0, 3, 6, 9, 12], sizes=[16, 16, 16, 16, 32]), r"mixes images of different sizes "
                                                                                  r"\(16x16, 32x32\)"),
}


@pytest.mark.parametrize("case", list(DICOM_CASES), ids=list(DICOM_CASES))
def test_inconsistent_dicom_series_is_refused(inputs, tmp_path, capsys, case):
    kwargs, needle = DICOM_CASES[case]
    folder = _dicom_series(tmp_path / "dicom", **kwargs)
    out = tmp_path / "sct.nii.gz"
    rc, err, dt = run_cli(["synthesize", "--mri", folder, "--model", inputs["unet_cnn"], "--out-ct", out], capsys)
    assert_clear_error(rc, err, dt, needle + r".*Fix: choose one series with --series-uid UID")
    assert not out.exists()


def test_series_uid_picks_one_of_several_dicom_series(inputs, tmp_path, capsys):
    folder = _dicom_series(tmp_path / "dicom", [0, 3, 6, 9], uid=UID_A)
    _dicom_series(folder, [0, 2, 4, 6, 8], uid=UID_B, start=100)
    out = tmp_path / "sct.nii.gz"
    base = ["synthesize", "--mri", folder, "--model", inputs["unet_cnn"], "--out-ct", out]
    rc, err, dt = run_cli(base, capsys)
    assert_clear_error(rc, err, dt, r"holds 2 DICOM series.*--series-uid UID")
    rc, err, dt = run_cli(base + ["--series-uid", UID_B], capsys)
    assert rc == 0, err
    sct = sitk.ReadImage(str(out))
    assert sct.GetSize() == (16, 16, 5) and abs(sct.GetSpacing()[2] - 2.0) < 1e-6
    rc, err, dt = run_cli(base + ["--series-uid", "1.2.3"], capsys)
    assert_clear_error(rc, err, dt, r"series 1\.2\.3 is not in .*use one of")


# ------------------------------------------------------------------------------------------ also seen: output folder
@pytest.fixture
def readonly_dir(tmp_path, monkeypatch):
    """A folder nobody may write into: chmod 0555 (or, as root, whom permission bits do not stop, a file system that
    answers EROFS: os.open is patched for paths inside that folder)."""
    d = tmp_path / "readonly"
    d.mkdir()
    (d / "sct.nii.gz").write_bytes(PREVIOUS)
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    real_open = os.open

    def ro_open(path, flags, *a, **k):
        if os.path.dirname(os.path.abspath(os.fsdecode(path))) == str(d) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    yield d


def test_readonly_output_folder_is_refused_before_compute(inputs, readonly_dir, capsys):
    out = readonly_dir / "sct.nii.gz"
    rc, err, dt = run_cli(["synthesize", "--mri", inputs["mr"], "--model", inputs["ddpm"], "--out-ct", out,
                           "--steps", "1"], capsys)
    assert_clear_error(rc, err, dt, r"cannot write --out-ct into .*readonly: (permission denied|the file system is "
                                    r"read-only).*Fix: ")
    assert "PROGRESS" not in err, "sampling ran before the output was checked"
    assert out.read_bytes() == PREVIOUS


def test_readonly_output_folder_for_every_command(inputs, readonly_dir, capsys, tiny_phantom_cases):
    d = readonly_dir
    argvs = [["export", "--model", inputs["ddpm"], "--out", d / "m.safetensors"],
             ["register", "--fixed", inputs["ct"], "--moving", inputs["mr"], "--out", d / "r.nii.gz"],
             ["evaluate", "--pred", inputs["ct"], "--ref", inputs["ct"], "--json", d / "m.json"],
             ["evaluate", "--models", inputs["unet_cnn"], "--data", tiny_phantom_cases, "--out", d],
             ["train", "--data", tiny_phantom_cases, "--run-dir", d, "--steps", "1"],
             ["demo", "--out", d]]
    for argv in argvs:
        rc, err, dt = run_cli(argv, capsys)
        assert_clear_error(rc, err, dt, r"cannot write .* (permission denied|read-only)")
    assert sorted(p.name for p in d.iterdir()) == ["sct.nii.gz"]


# ------------------------------------------------------------------------------------------ also seen: training
@pytest.mark.parametrize("setting, needle", [
    ("train.batch_size=[1]", r"train\.batch_size must be a positive integer"),
    ("train.steps=abc", r"train\.steps must be a positive integer, got 'abc'"),
    ("model.options=3", r"model\.options must be a mapping"),
    ("model.process=x", r"model\.process must be a mapping"),
    ("data.split_seed=x", r"data\.split_seed must be a non-negative integer"),
    ("data.register=maybe", r"data\.register must be true or false"),
    ("train.seed=-1", r"train\.seed must be a whole number between 0 and 2\*\*62"),
    ("model.image_size=1000000", r"model\.image_size 1000000 is above the limit"),
    ("train.batch_size=1000000000", r"train\.batch_size 1000000000 is above the limit"),
    ("model.unet={base_channels: 100000}", r"'base_channels' is 100000, above the limit"),
    ("train.steps=[1", r"is not valid YAML"),
    ("train.device=tpu", r"train\.device 'tpu' is not a device"),
])
def test_training_config_type_errors(tmp_path, capsys, tiny_phantom_cases, setting, needle):
    rc, err, dt = run_cli(["train", "--data", tiny_phantom_cases, "--run-dir", tmp_path / "run", "--steps", "1",
                           "--set", setting], capsys)
    assert_clear_error(rc, err, dt, needle)
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_train_device_tpu(tmp_path, capsys, tiny_phantom_cases):
    rc, err, dt = run_cli(["train", "--data", tiny_phantom_cases, "--run-dir", tmp_path / "run", "--steps", "1",
                           "--device", "tpu"], capsys)
    assert_clear_error(rc, err, dt, r"'tpu' is not a device this engine can use.*Fix: use auto")


# ------------------------------------------------------------------------------------------ also seen: killed writes
def test_temporary_of_a_killed_writer_is_removed_on_the_next_run(inputs, tmp_path, capsys):
    """SIGKILL in the middle of a write: the good file stays, the temporary is left (nothing can remove it then), and
    the next run writing into that folder removes it (its writer is gone), with a note."""
    out = tmp_path / "sct.nii.gz"
    out.write_bytes(PREVIOUS)
    child = textwrap.dedent("""
        import sys, time
        from MRtoCTSynthesisLib.io.atomic import atomic_write
        with atomic_write(sys.argv[1]) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"half of a new volume")
                fh.flush()
                print("writing", flush=True)
                time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child, str(out)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ENGINE)))
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = [p for p in tmp_path.iterdir() if atomic.is_our_temporary(p.name)]
    assert len(left) == 1 and out.read_bytes() == PREVIOUS
    old = time.time() - 2 * atomic.DEAD_WRITER_AGE_S
    os.utime(left[0], (old, old))
    legacy = tmp_path / ".model.safetensors.ab12cd_9.tmp"  # a checkpoint temporary of an earlier engine version
    legacy.write_bytes(b"x")
    os.utime(legacy, (time.time() - 2 * atomic.STALE_AGE_S,) * 2)
    ours_alive = tmp_path / f".other.nii.gz.{os.getpid()}-abcdefgh.partial.nii.gz"  # a live writer's: kept
    ours_alive.write_bytes(b"x")
    os.utime(ours_alive, (old, old))
    user_file = tmp_path / ".notes.partial"  # not ours: never touched
    user_file.write_bytes(b"x")

    rc, err, dt = run_cli(["evaluate", "--pred", inputs["ct"], "--ref", inputs["ct"],
                           "--json", tmp_path / "metrics.json"], capsys)
    assert rc == 0, err
    assert re.search(r"note: removed 2 stale temporary file\(s\)", err), err
    assert not left[0].exists() and not legacy.exists()
    assert ours_alive.exists() and user_file.exists()
    assert out.read_bytes() == PREVIOUS


def test_sigterm_during_a_write_removes_the_temporary(tmp_path):
    """The Slicer module's Cancel (SIGTERM -> KeyboardInterrupt in the CLI) mid-write: no temporary, target kept."""
    out = tmp_path / "sct.nii.gz"
    out.write_bytes(PREVIOUS)
    child = textwrap.dedent("""
        import sys, time
        from MRtoCTSynthesisLib.apps.args import sigterm_as_interrupt
        from MRtoCTSynthesisLib.io.atomic import atomic_write
        sigterm_as_interrupt()
        try:
            with atomic_write(sys.argv[1]) as tmp:
                tmp.write_bytes(b"half")
                print("writing", flush=True)
                time.sleep(120)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child, str(out)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ENGINE)))
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert out.read_bytes() == PREVIOUS
    no_temporaries(tmp_path)


# ------------------------------------------------------------------------------------------ the last line of defence
def test_unexpected_errors_are_one_clear_message_and_debug_shows_the_traceback(inputs, capsys, monkeypatch):
    from MRtoCTSynthesisLib.apps.commands import info

    def broken(args):
        return {}["missing"]

    monkeypatch.setattr(info, "run", broken)
    monkeypatch.delenv("MRTOCT_DEBUG", raising=False)
    rc, err, dt = run_cli(["info", "--model", inputs["ddpm"]], capsys)
    assert rc == 1 and "Traceback" not in err, err
    assert re.search(r"^error: internal error: KeyError: 'missing'\n  Fix: this is a bug .*--debug", err, re.M), err
    assert len(err.strip().splitlines()) == 2
    for argv in (["--debug", "info", "--model", inputs["ddpm"]], ["info", "--model", inputs["ddpm"], "--debug"]):
        rc, err, dt = run_cli(argv, capsys)
        assert rc == 1 and "Traceback (most recent call last)" in err and "KeyError" in err, err

    def out_of_memory(args):
        raise MemoryError

    monkeypatch.setattr(info, "run", out_of_memory)
    rc, err, dt = run_cli(["info", "--model", inputs["ddpm"]], capsys)
    assert_clear_error(rc, err, dt, r"ran out of memory.*Fix: use a smaller --batch-size")
