"""Per-slice inference time and peak memory: SynDiff vs conditional DDPM samplers vs the one-call baselines.

Run on demand (not a test):

    python benchmarks/methods_speed.py [--device cpu|cuda] [--size 256] [--presets tiny full] [--threads 1]
                                       [--out benchmarks/results/methods_speed_cpu.json]

The shape of SynDiff Table V (SynDiff 0.182 s vs DDPM 85.8 s per 256x256 slice on an RTX 3090), measured
here, side by side in one run, for both network widths ("tiny" CPU presets and "full" paper-size presets;
weights do not change the cost, so untrained networks are used):

* ``syndiff``: the real sampler (``model.sample``): T/k = 4 calls of the diffusive generator. Measured.
* ``ddpm`` with ``ddpm`` 1000 steps, ``ddim`` 100 steps, ``dpmpp`` 20 steps: the time of ONE denoiser
  evaluation is measured (a few repetitions) and multiplied by the sampler's NFE -- a linear
  extrapolation (the samplers' own arithmetic is negligible next to the network). Marked "extrapolated".
* ``unet_cnn`` (the same UNet is the generator of ``pix2pix`` and ``wgan_gp``, so they cost the same) and
  ``cyclegan`` (ResNet generator): one network call. Measured.

Every timed call follows one untimed warm-up call; the fastest timed repetition is reported.

Each configuration runs in a fresh worker process (batch 1, fp32, ``torch.no_grad``) so the memory figures
do not mix: on CPU "peak RSS" is the worker's maximum resident set size and "inference RSS" its increase
over the RSS right after the model was built (activations and workspace of a sample); on CUDA both are
``torch.cuda.max_memory_allocated`` (total, and above the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WorkerFailed, peak_rss_mib, serve_worker, spawn_worker  # noqa: E402

PAPER = {"device": "RTX 3090 (SynDiff Table V)", "syndiff_s_per_slice": 0.182, "ddpm_1000_s_per_slice": 85.773,
         "cgan_s_per_slice": 0.060, "syndiff_memory_gb": 2.12, "ddpm_memory_gb": 2.95, "cgan_memory_gb": 0.77}

#: (method, sampler, NFE) rows; "eval" rows are extrapolated from one denoiser evaluation
ROWS = [("syndiff", "syndiff", 4), ("ddpm", "ddpm", 1000), ("ddpm", "ddim", 100), ("ddpm", "dpmpp", 20),
        ("unet_cnn", "direct", 1), ("cyclegan", "direct", 1)]
INFERENCE_NET = {"syndiff": "diff_gen_ct", "ddpm": "denoiser", "unet_cnn": "generator", "cyclegan": "gen_ct"}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(spec: dict) -> dict:
    import torch

    from MRtoCTSynthesisLib.models.methods import create_model

    torch.set_num_threads(spec["threads"])
    dev = torch.device(spec["device"])
    torch.manual_seed(0)
    method, preset, size = spec["method"], spec["preset"], spec["size"]
    model = create_model(method, size, unet=preset).to(dev)
    net = model.networks[INFERENCE_NET[method]]
    params = sum(p.numel() for p in net.parameters())
    cond = torch.rand(1, 1, size, size, device=dev) * 2 - 1
    gen = torch.Generator(device=dev).manual_seed(0)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mib()
    if method == "ddpm":  # one denoiser evaluation, as every sampler step makes
        x = torch.randn(1, 1, size, size, device=dev)
        t = torch.full((1,), 500.0, device=dev)

        def call():
            return model.network(x, cond, t)
    else:
        sampler = model.make_sampler(None, None)

        def call():
            return model.sample(cond, sampler, generator=gen)
    times = []
    with torch.no_grad():
        for _ in range(spec["warmup"]):
            call()
        sync()
        for _ in range(spec["reps"]):
            t0 = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_rss_mib()
    return {"method": method, "preset": preset, "params": params, "seconds_per_call": min(times),
            "all_seconds": times, "peak_mib": peak, "inference_mib": peak - base, "torch": torch.__version__}


def run_worker(spec: dict) -> dict:
    try:
        return spawn_worker(__file__, spec, spec["threads"], timeout=1800)
    except WorkerFailed as e:
        raise RuntimeError(f"worker {spec} failed:\n{e.stderr[-3000:]}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--presets", nargs="+", default=["tiny", "full"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker (default 1)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions after one warm-up call "
                    "(default: 2 tiny, 1 full on CPU)")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/methods_speed_<device>.json)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, worker)

    t_start = time.perf_counter()
    measured = {}
    for preset in args.presets:
        heavy = preset != "tiny" and args.device == "cpu"
        reps = args.reps or (1 if heavy else 2)
        for method in dict.fromkeys(m for m, _, _ in ROWS):
            spec = {"method": method, "preset": preset, "size": args.size, "device": args.device,
                    "threads": args.threads, "reps": reps, "warmup": 1}
            measured[(method, preset)] = r = run_worker(spec)
            print(f"  {preset:5s} {method:9s} {r['seconds_per_call']:.3f} s per call, peak {r['peak_mib']:.0f} MiB",
                  file=sys.stderr, flush=True)

    rows = []
    for preset in args.presets:
        for method, sampler, nfe in ROWS:
            r = measured[(method, preset)]
            per_slice = r["seconds_per_call"] * (nfe if method == "ddpm" else 1)
            rows.append({"method": method, "sampler": sampler, "preset": preset, "nfe": nfe,
                         "params_M": round(r["params"] / 1e6, 3), "s_per_slice": per_slice,
                         "how": (f"extrapolated: {nfe} x one evaluation ({r['seconds_per_call']:.3f} s)"
                                 if method == "ddpm" else f"measured ({len(r['all_seconds'])} run(s))"),
                         "peak_mib": round(r["peak_mib"], 1), "inference_mib": round(r["inference_mib"], 1)})
    for preset in args.presets:
        s = {(r["method"], r["sampler"]): r["s_per_slice"] for r in rows if r["preset"] == preset}
        for r in rows:
            if r["preset"] == preset:
                r["x_syndiff"] = round(r["s_per_slice"] / s[("syndiff", "syndiff")], 3)

    lines = [(f"Per-slice inference at {args.size}x{args.size}, batch 1, fp32, {args.device}"
              f" ({args.threads} thread(s)), untrained weights; DDPM-prior rows extrapolated from one evaluation."), "",
             ("| preset | method | sampler | NFE | params (M) | s / slice | vs SynDiff | how | peak mem (MiB) | "
              "inference mem (MiB) |"),
             "|---|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['method']} | {r['sampler']} | {r['nfe']} | {r['params_M']:.2f} | "
                     f"{r['s_per_slice']:.3f} | {r['x_syndiff']:.2f}x | {r['how']} | {r['peak_mib']:.0f} | "
                     f"{r['inference_mib']:.0f} |")
    lines.append(f"| paper | SynDiff / DDPM / cGAN | RTX 3090 | 4 / 1000 / 1 | | {PAPER['syndiff_s_per_slice']} / "
                 f"{PAPER['ddpm_1000_s_per_slice']} / {PAPER['cgan_s_per_slice']} | | SynDiff Table V | "
                 f"{PAPER['syndiff_memory_gb']} / {PAPER['ddpm_memory_gb']} / {PAPER['cgan_memory_gb']} GB | |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out or Path(__file__).parent / "results" / f"methods_speed_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"rows": rows, "paper": PAPER, "size": args.size, "device": args.device, "threads": args.threads,
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "load_average": os.getloadavg(), "python": platform.python_version(),
           "torch": next(iter(measured.values()))["torch"], "wall_seconds": time.perf_counter() - t_start,
           "markdown": table}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
