"""MR -> CT registration side by side: this engine vs ANTs Rigid vs elastix, on generated cases (run on demand).

    OMP_NUM_THREADS=1 python benchmarks/registration.py [--cases NAME ...] [--tools ours ants elastix previous]
        [--write-readme] [--json benchmarks/results/registration_cpu.json]

Needs the optional ``bench`` extra (antspyx==0.6.3, itk-elastix==0.25.4, nilearn==0.14.1) in a separate environment, see
pyproject.toml. Cases: :mod:`registration_cases` (phantoms of the project's generator on thick oblique
grids with known rigid motions, a thin-slice case, partial fields of view, and a real 1 mm T1 MRI (the
ICBM 2009a template shipped in nilearn's wheel) against a contrast-remapped copy). Every tool runs in a fresh
worker process with one thread (``OMP_NUM_THREADS=1``, ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``, SimpleITK's
global default threads 1); the tools of one case run one after the other, so they share the machine's load. Timed:
the registration call only (reading the files is not), including, for this engine, its resampling
and quality checks.

Tools:

* ``ours``: :func:`MRtoCTSynthesisLib.pipeline.registration.register` with its defaults (``mode="rigid"``).
* ``ants``: ``ants.registration(fixed, moving, type_of_transform='Rigid', random_seed=1)`` (antspyx 0.6.3);
  the forward ``.mat`` is read with SimpleITK.
* ``elastix``: ``itk.elastix_registration_method`` with elastix's default ``rigid`` parameter map
  (itk-elastix 0.25.4); the Euler parameters are turned into a SimpleITK transform, and that
  conversion is checked against elastix's own resampled output (``check_ncc``).
* ``previous``: the engine's registration before issue 18 (``rigid+affine`` with ITK's smoothed metric
  gradients and isotropic shrink factors), read from git history (commit ``PREVIOUS_COMMIT``).

TRE: distance between where the estimated and the true transform send each target point (label
centroids, body-box corners, 200 random body voxels; fixed space), mean/max and mean |error| per
physical axis (x, y, z; z is the slice axis up to the 7 degree tilt).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    RESULTS,
    WorkerFailed,
    command_line,
    git_commit,
    machine_info,
    machine_line,
    markdown_table,
    serve_worker,
    spawn_worker,
    write_json,
)
from registration_cases import CaseSpec, tre, write_case  # noqa: E402

BEGIN, END = "<!-- registration:begin -->", "<!-- registration:end -->"
PREVIOUS_COMMIT = "523f0b6"  # main before issue 18: pipeline/registration.py as one module

THICK = dict(fixed_spacing=(0.93, 0.93, 3.0), moving_spacing=(0.93, 0.93, 3.0), thick_factor=3,
             fixed_tilt_deg=(0.0, 7.0, 0.0), moving_tilt_deg=(7.0, 0.0, 0.0))
HEAD = dict(region="head", fixed_size=(208, 240, 44), moving_size=(208, 240, 44))
PELVIS = dict(region="pelvis", fixed_size=(340, 280, 44), moving_size=(320, 260, 40))

CASES = [
    # thick (3 mm) oblique, motions up to 10 deg / 10 mm: the acceptance set
    CaseSpec("head_t1_thick_rz6", seed=11, weighting="t1", angles_deg=(0, 0, 6), shift_mm=(6, -4, 3),
             tags=("thick", "le10"), **THICK, **HEAD),
    CaseSpec("head_t2_thick_rx10", seed=12, weighting="t2", angles_deg=(10, 0, 0), shift_mm=(10, 5, -8),
             tags=("thick", "le10"), **THICK, **HEAD),
    CaseSpec("head_t1_thick_mixed", seed=13, weighting="t1", angles_deg=(-6, 7, 5), shift_mm=(-7, 8, 6),
             tags=("thick", "le10"), **THICK, **HEAD),
    CaseSpec("pelvis_t2_thick_mixed", seed=14, weighting="t2", angles_deg=(4, -5, 7), shift_mm=(9, -7, 6),
             tags=("thick", "le10"), **THICK, **PELVIS),
    CaseSpec("pelvis_t1_thick_ry10", seed=15, weighting="t1", angles_deg=(0, 10, 0), shift_mm=(-10, 10, 5),
             tags=("thick", "le10"), **THICK, **PELVIS),
    # a real MRI: the 1 mm ICBM 2009a T1 (nilearn's wheel), resampled to thick oblique slices, vs a remapped copy
    CaseSpec("real_mni152_t1_vs_remap_thick", region="real_mni152", seed=21, weighting="t1",
             moving_spacing=(0.93, 0.93, 3.0), moving_size=(200, 230, 56), moving_tilt_deg=(7, 0, 0),
             thick_factor=3, angles_deg=(8, -6, 5), shift_mm=(7, -9, 6), tags=("thick", "real", "le10")),
    # larger motions: 15 deg / 20 mm
    CaseSpec("head_t2_thick_15deg_20mm", seed=16, weighting="t2", angles_deg=(-15, 5, 0), shift_mm=(20, -10, 5),
             tags=("thick", "large"), **THICK, **HEAD),
    CaseSpec("pelvis_t2_thick_15deg_20mm", seed=17, weighting="t2", angles_deg=(0, 0, 15), shift_mm=(-20, 8, -6),
             tags=("thick", "large"), **THICK, **PELVIS),
    # thin slices, 1 mm isotropic
    CaseSpec("head_t1_thin_1mm", seed=18, weighting="t1", region="head", fixed_spacing=(1.0, 1.0, 1.0),
             fixed_size=(190, 220, 150), fixed_tilt_deg=(0, 0, 0), moving_spacing=(1.0, 1.0, 1.0),
             moving_size=(190, 220, 150), moving_tilt_deg=(7, 0, 0), thick_factor=1, angles_deg=(3, 8, -5),
             shift_mm=(-9, 4, 7), tags=("thin",)),
    # partial field of view: the MRI covers a slab of the CT's body
    CaseSpec("head_t2_partial_fov", seed=19, weighting="t2", angles_deg=(5, -6, 4), shift_mm=(8, -6, 9),
             fov_center_mm=(0, 0, 25), tags=("thick", "partial"),
             **{**THICK, **HEAD, "moving_size": (208, 240, 24)}),
    CaseSpec("pelvis_t1_partial_fov", seed=20, weighting="t1", angles_deg=(-7, 3, -6), shift_mm=(-6, 9, -8),
             fov_center_mm=(0, 20, -15), tags=("thick", "partial"),
             **{**THICK, **PELVIS, "moving_size": (260, 220, 24)}),
]
TOOLS = ("ours", "ants", "elastix", "previous")


# ------------------------------------------------------------------------------------------------ workers
def _single_thread():
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _result(tool, transform, seconds, folder, extra=None):
    import SimpleITK as sitk

    true = sitk.ReadTransform(str(Path(folder) / "true.tfm"))
    pts = np.load(Path(folder) / "points.npy")
    out = dict(tool=tool, seconds=round(seconds, 3), tre=tre(transform, true, pts))
    out.update(extra or {})
    return out


def _previous_module():
    src = subprocess.run(["git", "show",
                          f"{PREVIOUS_COMMIT}:MRtoCTSynthesis/MRtoCTSynthesisLib/pipeline/registration.py"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="reg-prev-")) / "previous_registration.py"
    # the old module imported its siblings relatively; point them at the installed package
    path.write_text(src.replace("from ..io.atomic", "from MRtoCTSynthesisLib.io.atomic")
                    .replace("from ..errors", "from MRtoCTSynthesisLib.errors")
                    .replace("from ..io.volume", "from MRtoCTSynthesisLib.io.volume"))
    spec = importlib.util.spec_from_file_location("previous_registration", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def worker(spec: dict) -> dict:
    _single_thread()
    import SimpleITK as sitk

    tool, folder = spec["tool"], Path(spec["folder"])
    f_path, m_path = str(folder / "fixed.nii"), str(folder / "moving.nii")
    if tool in ("ours", "previous"):
        import warnings

        from MRtoCTSynthesisLib.io.volume import read_volume

        fixed, moving = read_volume(f_path, "fixed"), read_volume(m_path, "moving")
        if tool == "ours":
            from MRtoCTSynthesisLib.pipeline.registration import register
        else:
            register = _previous_module().register
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            res = register(fixed, moving)
            dt = time.perf_counter() - t0
        extra = dict(mode=res.mode, warnings=list(getattr(res, "warnings", [])) or [str(w.message) for w in caught])
        if tool == "ours":
            extra["quality"] = res.quality
        return _result(tool, res.transform, dt, folder, extra)
    if tool == "ants":
        import ants

        fixed, moving = ants.image_read(f_path), ants.image_read(m_path)
        t0 = time.perf_counter()
        res = ants.registration(fixed, moving, type_of_transform="Rigid", random_seed=1)
        dt = time.perf_counter() - t0
        mats = [p for p in res["fwdtransforms"] if str(p).endswith(".mat")]
        return _result(tool, sitk.ReadTransform(mats[0]), dt, folder, dict(version=ants.__version__))
    if tool == "elastix":
        import itk

        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
        fixed = itk.imread(f_path, itk.F)
        moving = itk.imread(m_path, itk.F)
        params = itk.ParameterObject.New()
        params.AddParameterMap(params.GetDefaultParameterMap("rigid"))
        t0 = time.perf_counter()
        result_image, result_params = itk.elastix_registration_method(fixed, moving, parameter_object=params,
                                                                       log_to_console=False,
                                                                       number_of_threads=1)
        dt = time.perf_counter() - t0
        pm = result_params.GetParameterMap(result_params.GetNumberOfParameterMaps() - 1)
        p = [float(v) for v in pm["TransformParameters"]]
        centre = [float(v) for v in pm["CenterOfRotationPoint"]]
        t = sitk.Euler3DTransform(centre, p[0], p[1], p[2], p[3:6])
        if "ComputeZYX" in pm and pm["ComputeZYX"][0] == "true":
            t.SetComputeZYX(True)
        # check the conversion: our resampling with t against elastix's own output
        f_img, m_img = sitk.ReadImage(f_path, sitk.sitkFloat32), sitk.ReadImage(m_path, sitk.sitkFloat32)
        ours = sitk.GetArrayFromImage(sitk.Resample(m_img, f_img, t, sitk.sitkLinear, 0.0))
        theirs = np.asarray(itk.array_from_image(result_image), dtype=np.float64)
        both = (ours != 0) & (theirs != 0)
        ncc = float(np.corrcoef(ours[both], theirs[both])[0, 1]) if both.sum() > 100 else None
        return _result(tool, t, dt, folder, dict(check_ncc=ncc, parameter_map="default 'rigid'"))
    raise SystemExit(f"unknown tool {tool}")


# --------------------------------------------------------------------------------------------------- main
def _row(case, info, r):
    t = r.get("tre") or {}
    return [case.name, r["tool"], f"{t.get('mean', float('nan')):.2f}", f"{t.get('max', float('nan')):.2f}",
            f"{t.get('x', float('nan')):.2f} / {t.get('y', float('nan')):.2f} / {t.get('z', float('nan')):.2f}",
            f"{r['seconds']:.1f}" if r.get("seconds") is not None else "", r.get("ratio", ""), r.get("note", "")]


def render(doc: dict) -> str:
    m = doc["machine"]
    partial = "" if doc.get("complete", True) else (f" The run was stopped after {len(doc['cases'])} of "
                                                    f"{len(CASES)} cases; the rows below are those it finished.")
    lines = [f"Machine: {machine_line(m)}; SimpleITK threads 1, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1, "
             f"OMP_NUM_THREADS=1. Command: `{doc['command']}` ({doc['total_seconds']:.0f} s in all), commit "
             f"{doc['commit'][:10]}. Tools: {', '.join(doc['tool_versions'])}.{partial}", ""]
    rows = []
    for c in doc["cases"]:
        case = CaseSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in c["spec"].items()})
        for r in c["results"]:
            rows.append(_row(case, c, r))
    lines.append(markdown_table(["case", "tool", "TRE mean (mm)", "TRE max (mm)", "mean abs x / y / z (mm)",
                                 "seconds", "time vs ANTs", "notes"], rows,
                                ["---", "---", "---:", "---:", "---:", "---:", "---:", "---"]))
    s = doc["summary"]
    lines += ["", s["text"]]
    return "\n".join(lines)


def summarise(doc: dict) -> dict:
    out = {}
    for tool in TOOLS:
        sel = [(c, r) for c in doc["cases"] for r in c["results"] if r["tool"] == tool and r.get("tre")]
        if not sel:
            continue
        le10 = [r for c, r in sel if "le10" in c["spec"]["tags"]]
        out[tool] = dict(
            cases=len(sel), mean_tre_all=[round(r["tre"]["mean"], 3) for _, r in sel],
            worst_mean_tre_le10=round(max(r["tre"]["mean"] for r in le10), 3) if le10 else None,
            total_seconds=round(sum(r["seconds"] for _, r in sel), 1),
            total_seconds_le10=round(sum(r["seconds"] for r in le10), 1) if le10 else None)
    parts = []
    if "ours" in out and "ants" in out:
        o, a = out["ours"], out["ants"]
        n_le10 = sum("le10" in c["spec"]["tags"] for c in doc["cases"])
        real = any("real" in c["spec"]["tags"] for c in doc["cases"])
        parts.append(f"Thick oblique cases with motions up to 10 deg / 10 mm ({n_le10} case(s)"
                     f"{', the real MRI included' if real else ''}): worst mean TRE {o['worst_mean_tre_le10']:.2f} mm "
                     "for this "
                     f"engine's rigid default against {a['worst_mean_tre_le10']:.2f} mm for ANTs Rigid, in "
                     f"{o['total_seconds_le10']:.0f} s against {a['total_seconds_le10']:.0f} s "
                     f"({o['total_seconds_le10'] / a['total_seconds_le10']:.2f}x ANTs' time). All cases: "
                     f"{o['total_seconds']:.0f} s against {a['total_seconds']:.0f} s.")
    for tool in ("elastix", "previous"):
        if tool in out and out[tool]["worst_mean_tre_le10"] is not None:
            n = sum(1 for c in doc["cases"] for r in c["results"]
                    if r["tool"] == tool and r.get("tre") and "le10" in c["spec"]["tags"])
            parts.append(f"{tool}: worst mean TRE {out[tool]['worst_mean_tre_le10']:.2f} mm on {n} of these cases, "
                         f"{out[tool]['total_seconds_le10']:.0f} s.")
    out["text"] = " ".join(parts)
    return out


def _write(doc, args, t_all, final):
    doc["total_seconds"] = round(time.perf_counter() - t_all, 1)
    doc["complete"] = bool(final)
    doc["summary"] = summarise(doc)
    out = Path(args.json)
    write_json(out, doc)
    md = render(doc)
    out.with_suffix(".md").write_text(md + "\n")
    return md


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", help="case names (default: all)")
    ap.add_argument("--tools", nargs="*", default=list(TOOLS), choices=TOOLS)
    ap.add_argument("--previous-cases", nargs="*", default=["head_t1_thick_rz6", "head_t2_thick_rx10"],
                    help="cases the previous engine runs on (default: the two motions of issue 18; it takes minutes "
                         "per case; 'all' for every case)")
    ap.add_argument("--json", default=str(RESULTS / "registration_cpu.json"))
    ap.add_argument("--write-readme", action="store_true", help="replace the table in benchmarks/README.md")
    ap.add_argument("--from-json", help="only re-render the table (and README with --write-readme) from a results "
                    "JSON of an earlier (possibly interrupted) run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, worker)
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        doc["summary"] = summarise(doc)
        md = render(doc)
        print(md)
        if args.write_readme:
            _write_readme(md)
        return 0
    _single_thread()
    t_all = time.perf_counter()
    cases = [c for c in CASES if not args.cases or c.name in args.cases]
    doc = dict(machine=machine_info(), commit=git_commit(), command=command_line(), cases=[])
    versions = []
    for mod in ("ants", "itk", "SimpleITK"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001 - a missing tool is reported per row
            pass
    doc["tool_versions"] = versions
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="reg-bench-") as tmp:
        for case in cases:
            folder = Path(tmp) / case.name
            t0 = time.perf_counter()
            info = write_case(case, folder)
            info["build_seconds"] = round(time.perf_counter() - t0, 1)
            results = []
            for tool in args.tools:
                if tool == "previous" and "all" not in args.previous_cases and case.name not in args.previous_cases:
                    continue
                try:
                    r = spawn_worker(script, dict(tool=tool, folder=str(folder)), threads=1, timeout=1800)
                except WorkerFailed as exc:
                    r = dict(tool=tool, seconds=None, tre=None, note=f"failed: {str(exc)[-300:]}")
                results.append(r)
                t = r.get("tre") or {}
                print(f"{case.name:30s} {tool:9s} TRE mean {t.get('mean', float('nan')):6.2f} mm "
                      f"max {t.get('max', float('nan')):6.2f} xyz {t.get('x', 0):.2f}/{t.get('y', 0):.2f}/"
                      f"{t.get('z', 0):.2f}  {r.get('seconds') or float('nan'):6.1f} s", flush=True)
            ants_s = next((r["seconds"] for r in results if r["tool"] == "ants" and r.get("seconds")), None)
            for r in results:
                if ants_s and r.get("seconds"):
                    r["ratio"] = f"{r['seconds'] / ants_s:.2f}x"
                notes = []
                if r.get("warnings"):
                    notes.append(f"{len(r['warnings'])} warning(s)")
                if r.get("check_ncc") is not None:
                    notes.append(f"conversion check NCC {r['check_ncc']:.3f}")
                if r["tool"] == "previous":
                    notes.append(f"mode {r.get('mode')}")
                if r.get("note"):
                    notes.append(r["note"])
                r["note"] = "; ".join(notes)
            doc["cases"].append(dict(spec=case.as_dict(), info=info, results=results))
            _write(doc, args, t_all, final=False)  # partial results survive an interrupted run
    md = _write(doc, args, t_all, final=True)
    print(md)
    if args.write_readme:
        _write_readme(md)
    return 0


def _write_readme(md: str) -> None:
    readme = REPO / "benchmarks" / "README.md"
    text = readme.read_text()
    block = f"{BEGIN}\n{md}\n{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
