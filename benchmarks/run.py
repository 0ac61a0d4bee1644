"""Inference benchmark harness: method x sampler x engine, side by side in one run (run on demand).

    OMP_NUM_THREADS=1 python benchmarks/run.py [--model CKPT ...] [--case DIR | --phantom-size NX NY NZ]
        [--samplers dpmpp:20 ddim:100 ddpm:1000] [--samples K] [--slices N] [--device cpu|cuda]
        [--precision auto|fp32|bf16|fp16] [--batch-size B] [--channels-last] [--compile [--compile-mode M]]
        [--naive] [--warmup] [--threads 1] [--out benchmarks/results/NAME.json]

Models (``--model``, several allowed): checkpoint paths, or ``untrained:<method>[:<preset>]`` for an
untrained network built on the fly (``--image-size``; speed rows only: its PSNR means nothing and the
table says "untrained"). Default: the bundled demo DDPM (64x64, v-prediction), plus
``assets/demo_syndiff.safetensors`` when that file exists. A diffusion model (``ddpm``, ``score_sde``)
gets one row per ``--samplers`` entry (``name:steps``); a method with its own fixed sampler (SynDiff's 4
steps, the one-call CNN/GAN baselines) gets one row with it.

Case: ``--case DIR`` (``mr``, and optionally ``ct`` and ``mask`` volumes), default the bundled demo case
(64 x 64 x 36), or ``--phantom-size NX NY NZ`` (a pelvis phantom generated once, cached as .nii under
``--cache-dir``). ``--slices N`` keeps the N central axial slices so that a run stays short; seconds per
volume are then **extrapolated** linearly to the whole volume (the table says so).

Engines (one row each; ``--naive`` adds the second):

* ``batched``: :func:`MRtoCTSynthesisLib.pipeline.synthesis.synthesize` -- slices x samples in batches of
  ``--batch-size`` (default: the engine's choice), ``--precision`` (bf16 autocast on CUDA by default),
  optional ``--channels-last`` / ``--compile``.
* ``naive``: the baseline, implemented here and independent of the engine's batching: a plain Python loop
  over slices and samples calling the model's sampler on ONE image at a time (batch 1), fp32, no autocast;
  the same pre-processing (MR normalisation, canonical slicing) and the same mean/std reduction.

Every row runs in a fresh worker process, so "peak RSS" (``VmHWM``, the process's own high-water mark; not
``ru_maxrss``, which Linux carries over from the parent across fork + exec) is that row's own peak; "RSS
before" is the worker's resident size after loading model and case. On CUDA the peak device memory is
``torch.cuda.max_memory_allocated``. Measured per row: NFE per sample (from the run info / the sampler's own
count), wall seconds of the synthesis call, seconds per slice (all K samples of a slice),
per volume, throughput in slices x samples per second, PSNR / MAE of the sCT (the K-sample mean) against
the reference CT inside the body mask (:mod:`MRtoCTSynthesisLib.pipeline.metrics`). ``--warmup`` (default on for
CUDA) runs each configuration once untimed first (torch.compile, cuDNN autotuning, CUDA context);
its time is reported separately.

Writes ``--out`` (JSON with the machine, the commit, the command and the command that reproduces each row)
and the Markdown table next to it (``.md``), and prints the table.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    WorkerFailed,
    axial_axis,
    central_slices,
    command_line,
    demo_paths,
    git_commit,
    load_case,
    machine_info,
    machine_line,
    make_phantom_case,
    markdown_table,
    peak_rss_mib,
    rss_mib,
    serve_worker,
    set_threads,
    spawn_worker,
    write_json,
)

DIFFUSION_METHODS = ("ddpm", "score_sde")  # ddmm_synth needs CT measurements: not benchmarked here
PAPER = {"source": "SynDiff Table V, RTX 3090, 256x256", "ddpm_1000_s_per_slice": 85.773,
         "syndiff_s_per_slice": 0.182}


# ============================================================================================ worker
def _build_model(spec: dict, device):
    from MRtoCTSynthesisLib.models.methods import create_model, load_model

    m = spec["model"]
    if m.startswith("untrained:"):
        import torch

        parts = m.split(":")
        method, preset = parts[1], (parts[2] if len(parts) > 2 else "tiny")
        torch.manual_seed(0)
        opts = {"prediction": "v"} if method in ("ddpm", "score_sde") else None
        return create_model(method, spec["image_size"], unet=preset, options=opts).to(device)
    return load_model(m, device)


def _naive_synthesis(mri, model, sampler, samples: int, seed: int, device):
    """One slice, one sample per call, fp32: the baseline loop (independent of inference.py's batching)."""
    import torch

    from MRtoCTSynthesisLib.io.intensity import MRNormalization, model_std_to_hu, model_to_hu
    from MRtoCTSynthesisLib.io.slicing import from_canonical, from_model_grid, to_canonical, to_model_grid

    norm = MRNormalization.fit(mri.array, what="MRI")
    canon, layout = to_canonical(norm.apply(mri.array.astype(np.float32)), mri.geometry)
    n, size = layout.n_slices, model.image_size
    gen = torch.Generator(device=device).manual_seed(int(seed))
    s1 = np.zeros((n, size, size), np.float64)
    s2 = np.zeros((n, size, size), np.float64)
    nfe = 0
    for i in range(n):
        cond = to_model_grid(canon, layout, size, model.context, indices=[i]).to(device)
        for _ in range(samples):
            with torch.no_grad():
                out = model.sample(cond, sampler, generator=gen)
            x = out.x0[0, 0].double().cpu().numpy()
            s1[i] += x
            s2[i] += x * x
            nfe = out.nfe
    mean = s1 / samples
    std = np.sqrt(np.clip(s2 / samples - mean * mean, 0, None))
    back = lambda a: from_canonical(from_model_grid(torch.from_numpy(a[:, None]).float(), layout), layout)  # noqa: E731
    return (mri.with_array(model_to_hu(back(mean)).astype(np.float32)),
            mri.with_array(np.clip(model_std_to_hu(back(std)), 0, None).astype(np.float32)), nfe)


def worker(spec: dict) -> dict:
    set_threads(spec["threads"])
    import torch

    from MRtoCTSynthesisLib.devices import effective_precision
    from MRtoCTSynthesisLib.pipeline.metrics import mae, psnr
    from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, resolve_device, synthesize

    device = resolve_device(spec["device"])
    case = load_case(spec["case"], spec["slices"])
    model = _build_model(spec, device)
    n_run = case.mr.array.shape[axial_axis(case.mr.geometry)]
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rss_before = rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sampler_name, steps, k = spec["sampler"], spec["steps"], spec["samples"]
    warm_s = None
    if spec["engine"] == "batched":
        opts = SynthesisOptions(sampler=sampler_name, steps=steps, samples=k, seed=spec["seed"], device=str(device),
                                batch_size=spec["batch_size"], precision=spec["precision"],
                                channels_last=spec["channels_last"], compile=spec["compile"],
                                compile_mode=spec["compile_mode"], backend=spec.get("backend", "torch"))
        if spec.get("backend", "torch") != "torch":  # export (or load from the cache) outside the timed call
            from MRtoCTSynthesisLib.pipeline.synthesis import prepare_model

            t0 = time.perf_counter()
            prepare_model(model, device, opts)
            warm_s = time.perf_counter() - t0
        if spec["warmup"]:
            t0 = time.perf_counter()
            synthesize(case.mr, model, opts)
            sync()
            warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = synthesize(case.mr, model, opts)
        sync()
        wall = time.perf_counter() - t0
        sct, std, info = res.sct, res.std, res.info
        nfe, batch, sampler_label = info["nfe_per_sample"], info["batch_size"], f"{info['sampler']}"
        steps_eff = info["steps"]
    else:
        sampler = model.make_sampler(sampler_name, steps)
        if spec["warmup"]:  # one sample of one slice
            t0 = time.perf_counter()
            _naive_synthesis(central_slices(case.mr, 1), model, sampler, 1, spec["seed"], device)
            sync()
            warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sct, std, nfe = _naive_synthesis(case.mr, model, sampler, k, spec["seed"], device)
        sync()
        wall = time.perf_counter() - t0
        batch, sampler_label, steps_eff = 1, sampler.name, sampler.steps
    prec = effective_precision(device, spec["precision"]) if spec["engine"] == "batched" else "fp32"
    out = {"wall_s": wall, "warmup_s": warm_s, "precision_effective": prec, "nfe": float(nfe), "batch_size": batch,
           "sampler": sampler_label,
           "steps": steps_eff, "slices_run": int(n_run), "slices_full": int(case.n_slices_full),
           "rss_before_mib": rss_before, "peak_rss_mib": peak_rss_mib(),
           "peak_device_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
           "torch_threads": torch.get_num_threads(), "device": str(device), "backend": spec.get("backend", "torch"),
           "std_mean_hu": float(std.array.mean())}
    if case.ct is not None:
        body = case.mask.array > 0 if case.mask is not None else None
        out["psnr_db"] = psnr(sct.array, case.ct.array, body)
        out["mae_hu"] = mae(sct.array, case.ct.array, body)
    return out


# ============================================================================================ parent
def parse_sampler(s: str) -> tuple[str, int | None]:
    name, _, steps = s.partition(":")
    return name.strip().lower(), (int(steps) if steps else None)


def model_rows(model_spec: str, samplers):
    """(method, trained?, [(sampler, steps)]) for one ``--model`` entry."""
    from MRtoCTSynthesisLib.models.checkpoint import load_checkpoint
    from MRtoCTSynthesisLib.models.methods import METHODS

    if model_spec.startswith("untrained:"):
        method, trained = model_spec.split(":")[1], False
    else:
        method, trained = load_checkpoint(model_spec).metadata.get("method", "?"), True
    cls = METHODS[method]
    if method in DIFFUSION_METHODS:
        todo = [(n, s) for n, s in samplers if n in cls.valid_samplers]
    else:
        todo = [(cls.default_sampler, None)]
    return method, trained, todo


def run_worker(spec: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        out = spawn_worker(__file__, spec, spec["threads"], timeout)
    except WorkerFailed as e:
        return {"error": str(e), "process_s": time.perf_counter() - t0}
    out["process_s"] = time.perf_counter() - t0
    return out


def fmt(v, f="{:.2f}"):
    return "" if v is None else f.format(v)


def render(doc: dict) -> str:
    rows = []
    for r in doc["rows"]:
        res = r.get("result", {})
        label = Path(r["model"]).name if not r["model"].startswith("untrained:") else r["model"]
        if not r["trained"]:
            label += " (untrained)"
        if "error" in res:
            rows.append([label, r["method"], f"{r['sampler']}:{r['steps']}", "", r["engine"], "error", *[""] * 11])
            continue
        full, run = res["slices_full"], res["slices_run"]
        s_slice = res["wall_s"] / run
        s_vol = s_slice * full
        vol_note = "" if run >= full else " (extrap.)"
        thr = run * r["samples"] / res["wall_s"]
        prec = res.get("precision_effective", r["precision"])
        extras = [x for x in (r.get("backend", "torch") != "torch" and r["backend"],
                              r.get("channels_last") and "channels_last",
                              r.get("compile") and f"compile:{r['compile_mode']}") if x]
        engine = ("batched" if r["engine"] == "batched" else "naive loop") + (
            f" ({', '.join(extras)})" if extras else "")
        rows.append([label, r["method"], f"{res['sampler']}:{res['steps']}", f"{res['nfe']:.0f}", engine,
                     res["batch_size"], f"{res['device']} {prec}", f"{run}/{full}", r["samples"],
                     f"{res['wall_s']:.1f}", f"{s_slice:.3f}", f"{s_vol:.1f}{vol_note}", f"{thr:.2f}",
                     fmt(r.get("speedup_vs_naive"), "{:.2f}x"), f"{res['peak_rss_mib']:.0f}",
                     fmt(res.get("peak_device_mib"), "{:.0f}"),
                     fmt(res.get("psnr_db")) + ("" if r["trained"] else " *"), fmt(res.get("mae_hu"), "{:.1f}")])
    head = ["model", "method", "sampler:steps", "NFE", "engine", "batch", "device / precision", "slices run / volume",
            "K", "wall s", "s / slice (K samples)", "s / volume", "slices·samples / s", "vs naive", "peak RSS MiB",
            "peak GPU MiB", "PSNR dB", "MAE HU"]
    align = ["---"] * 3 + ["---:"] + ["---"] * 2 + ["---"] + ["---:"] * 11
    lines = [f"Machine: {machine_line(doc['machine'])}; load average "
             f"{doc['machine'].get('load_average_end', ['?'])[0]} "
             f"at the end. Commit at time of measurement: {doc['commit']} (the working tree may contain uncommitted "
             "changes).", "", f"Command: `{doc['command']}` ({doc['wall_s_total']:.0f} s in all).", "",
             f"Case `{doc['case']}`; each row in a fresh worker process; s / volume = s / slice x "
             f"{(doc['rows'] or [{}])[0].get('result', {}).get('slices_full', '?')} slices"
             + (" (extrapolated from the slices run)" if any(
                 r.get('result', {}).get('slices_run', 0) < r.get('result', {}).get('slices_full', 0)
                 for r in doc['rows'])
                else "") + "; vs naive = naive wall / this row's wall for the same model, sampler and K.", "",
             markdown_table(head, rows, align)]
    if any(not r["trained"] for r in doc["rows"]):
        lines += ["", "\\* untrained weights: speed and memory only, the PSNR is meaningless."]
    lines += ["", "Commands that reproduce each row:", ""]
    for r in doc["rows"]:
        lines.append(f"- {Path(r['model']).name if not r['model'].startswith('untrained:') else r['model']} "
                     f"{r['sampler']}{':' + str(r['steps']) if r['steps'] else ''} {r['engine']}: `{r['reproduce']}`")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", nargs="+", default=None, help="checkpoint(s) or untrained:<method>[:<preset>]")
    ap.add_argument("--case", default=None, help="case folder (mr/ct/mask); default: the bundled demo case")
    ap.add_argument("--phantom-size", type=int, nargs=3, metavar=("NX", "NY", "NZ"), default=None,
                    help="generate a pelvis phantom of this size instead of --case")
    ap.add_argument("--phantom-seed", type=int, default=42)
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "mrtoct_bench_cache"))
    ap.add_argument("--samplers", nargs="+", default=["dpmpp:20"], help="name:steps for diffusion models")
    ap.add_argument("--samples", type=int, default=8, help="Monte-Carlo samples K per slice")
    ap.add_argument("--slices", type=int, default=None, help="central axial slices to run (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                    help="the diffusion denoiser's backend in batched rows (onnx: ONNX Runtime on the CPU; "
                         "other methods stay on torch)")
    ap.add_argument("--modes", nargs="+", default=["batched"], choices=["batched", "naive"])
    ap.add_argument("--naive", action="store_true", help="add the naive-loop baseline rows")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                    help="one untimed run per row first (default: on for CUDA, off for CPU)")
    ap.add_argument("--image-size", type=int, default=64, help="grid of untrained:<method> models")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/run_<device>.json)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, worker)
    set_threads(args.threads)

    demo_case, demo_model = demo_paths()
    models = args.model
    if not models:
        models = [str(demo_model)]
        syn = demo_model.parent / "demo_syndiff.safetensors"
        if syn.exists():
            models.append(str(syn))
    case_dir = str(args.case) if args.case else str(demo_case)
    if args.phantom_size:
        print(f"generating a {args.phantom_size} phantom (cached in {args.cache_dir}) ...", flush=True)
        case_dir = str(make_phantom_case(args.phantom_size, args.phantom_seed, Path(args.cache_dir)))
    modes = list(dict.fromkeys(args.modes + (["naive"] if args.naive else [])))
    warmup = args.warmup if args.warmup is not None else args.device.startswith("cuda")
    samplers = [parse_sampler(s) for s in args.samplers]
    out = Path(args.out) if args.out else RESULTS / f"run_{args.device.split(':')[0]}.json"

    base_cmd = ["python", "benchmarks/run.py"]
    case_args = (["--phantom-size", *map(str, args.phantom_size), "--phantom-seed", str(args.phantom_seed)]
                 if args.phantom_size else (["--case", str(args.case)] if args.case else []))
    doc = {"command": command_line(), "commit": git_commit(), "machine": machine_info(args.device),
           "case": Path(case_dir).name if not args.case and not args.phantom_size else case_dir,
           "paper_reference": PAPER, "rows": []}
    print(machine_line(doc["machine"]), flush=True)
    t_all = time.perf_counter()
    for m in models:
        method, trained, todo = model_rows(m, samplers)
        if not todo:
            print(f"  {m}: none of {args.samplers} works with method {method}; skipped", flush=True)
        for name, steps in todo:
            for engine in modes:
                spec = {"model": m, "case": case_dir, "slices": args.slices, "sampler": name, "steps": steps,
                        "samples": args.samples, "seed": args.seed, "device": args.device,
                        "precision": args.precision, "batch_size": args.batch_size,
                        "channels_last": args.channels_last and engine == "batched",
                        "compile": args.compile and engine == "batched", "compile_mode": args.compile_mode,
                        "engine": engine, "warmup": warmup, "threads": args.threads, "image_size": args.image_size,
                        "backend": args.backend if engine == "batched" and method in DIFFUSION_METHODS else "torch"}
                model_arg = (m if m.startswith("untrained:")
                             else os.path.relpath(m, Path(__file__).resolve().parent.parent))
                reproduce = (f"OMP_NUM_THREADS={args.threads} " + " ".join(shlex.quote(a) for a in base_cmd + [
                    "--model", model_arg, *case_args,
                    *(["--samplers", f"{name}:{steps}" if steps else name] if method in DIFFUSION_METHODS else []),
                    "--samples", str(args.samples), *(["--slices", str(args.slices)] if args.slices else []),
                    "--device", args.device, "--modes", engine, "--threads", str(args.threads),
                    *(["--precision", args.precision] if engine == "batched" and args.precision != "auto" else []),
                    *(["--batch-size", str(args.batch_size)] if args.batch_size and engine == "batched" else []),
                    *(["--channels-last"] if spec["channels_last"] else []),
                    *(["--backend", spec["backend"]] if spec["backend"] != "torch" else []),
                    *(["--compile", "--compile-mode", args.compile_mode] if spec["compile"] else []),
                    *(["--warmup"] if warmup and not args.device.startswith("cuda") else []),
                    *(["--image-size", str(args.image_size)] if m.startswith("untrained:") else [])]))
                row = dict(spec, method=method, trained=trained, reproduce=reproduce)
                print(f"  {Path(m).name} {method} {name}:{steps} {engine} ...", end=" ", flush=True)
                row["result"] = res = run_worker(spec, args.timeout)
                if "error" in res:
                    print(f"FAILED:\n{res['error']}", flush=True)
                else:
                    print(f"{res['wall_s']:.1f} s, NFE {res['nfe']:.0f}, peak RSS {res['peak_rss_mib']:.0f} MiB"
                          + (f", PSNR {res['psnr_db']:.2f} dB" if "psnr_db" in res else ""), flush=True)
                doc["rows"].append(row)
                doc["wall_s_total"] = time.perf_counter() - t_all
                write_json(out, doc)
    # ratios against the naive loop of the same model, sampler and K (same run)
    naive = {(r["model"], r["sampler"], r["steps"]): r["result"]["wall_s"] for r in doc["rows"]
             if r["engine"] == "naive" and "wall_s" in r["result"]}
    for r in doc["rows"]:
        key = (r["model"], r["sampler"], r["steps"])
        if key in naive and "wall_s" in r["result"]:
            r["speedup_vs_naive"] = naive[key] / r["result"]["wall_s"]
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    doc["wall_s_total"] = time.perf_counter() - t_all
    doc["markdown"] = render(doc)
    write_json(out, doc)
    out.with_suffix(".md").write_text(doc["markdown"] + "\n")
    print()
    print(doc["markdown"])
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
