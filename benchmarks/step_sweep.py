"""PSNR vs NFE: DPM-Solver++(2M) and DDIM step sweeps against 1000-step ancestral DDPM (run on demand).

    OMP_NUM_THREADS=1 python benchmarks/step_sweep.py [--model CKPT] [--case DIR] [--slices 8] [--samples 2]
        [--seeds 0 1 2 3] [--dpmpp 5 8 10 12 15 20 30 50] [--ddim 10 20 50 100 200] [--ddpm 25 50 100 200]
        [--reference ddpm:1000] [--reference-seeds 0 1] [--tolerance 0.3] [--reuse]
        [--out benchmarks/results/step_sweep_cpu.json]

Every run synthesises the same central ``--slices`` axial slices of the case with ``--samples`` Monte-Carlo
samples (the sCT is their mean, exactly as :func:`~MRtoCTSynthesisLib.pipeline.synthesis.synthesize`
returns it) and is scored against the reference CT inside the body mask (PSNR, MAE;
:mod:`MRtoCTSynthesisLib.pipeline.metrics`). Each sampler setting runs once per ``--seeds`` entry (with the same
seed the deterministic samplers start from the same prior draws); the reference quality is ancestral DDPM
with ``--reference`` steps (1000, the papers' setting), run once per ``--reference-seeds`` entry;
``--ddpm`` adds the same ancestral sampler on respaced grids with fewer steps. The
PSNR of one run moves with the seed by a few tenths of a dB on a handful of slices, so settings are
compared by their mean over seeds: the recommended step count is the smallest one whose mean PSNR is
within ``--tolerance`` dB of (or above) the reference's mean PSNR.

``--reuse`` keeps the runs already in ``--out`` (same model, case, slices and samples) and only adds the
missing ones -- the 1000-step reference is by far the most expensive part. The JSON is rewritten after every
run; a Markdown table (``.md``) and a PNG plot (``.png``) are written next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    command_line,
    demo_paths,
    git_commit,
    load_case,
    machine_info,
    machine_line,
    markdown_table,
    set_threads,
    write_json,
)


def parse_spec(s: str) -> tuple[str, int]:
    name, _, steps = s.partition(":")
    return name, int(steps)


def parse_label(label: str) -> tuple[str, dict]:
    """``dpmpp`` -> ("dpmpp", {}); ``dpmpp(t_spacing=uniform)`` -> ("dpmpp", {"t_spacing": "uniform"})."""
    if "(" not in label:
        return label, {}
    name, _, rest = label.partition("(")
    opts = {}
    for kv in rest.rstrip(")").split(","):
        k, _, v = kv.partition("=")
        try:
            opts[k.strip()] = float(v) if k.strip() == "eta" else int(v)
        except ValueError:
            opts[k.strip()] = v.strip()
    return name, opts


def run_one(case, model, sampler: str, steps: int, samples: int, seed: int, device: str, role: str):
    from MRtoCTSynthesisLib.pipeline.metrics import mae, psnr
    from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize

    name, sampler_options = parse_label(sampler)
    t0 = time.perf_counter()
    res = synthesize(case.mr, model, SynthesisOptions(sampler=name, steps=steps, samples=samples,
                                                             seed=seed, device=device, sampler_options=sampler_options))
    wall = time.perf_counter() - t0
    body = case.mask.array > 0
    return res, {"role": role, "sampler": sampler, "steps": steps, "nfe": res.info["nfe_per_sample"], "seed": seed,
                 "psnr_db": psnr(res.sct.array, case.ct.array, body), "mae_hu": mae(res.sct.array, case.ct.array, body),
                 "wall_s": wall, "batch_size": res.info["batch_size"], "load_average": os.getloadavg()[0]}


def import_old(doc: dict) -> list[dict]:
    """Runs of a previous JSON (this format, or the first one with reference / reference_repeats / runs)."""
    runs = []
    for r in doc.get("runs", []):
        runs.append(dict(r, role=r.get("role", "sweep")))
    for key in ("reference",):
        if doc.get(key):
            runs.append(dict(doc[key], role="reference"))
    for r in doc.get("reference_repeats", []):
        runs.append(dict(r, role="reference"))
    seen, out = set(), []
    for r in runs:
        k = (r["role"], r["sampler"], r["steps"], r["seed"])
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def summarise(doc: dict) -> dict:
    """Mean / sd / min / max PSNR per (sampler, steps); the reference; the recommended step counts."""
    groups: dict = {}
    for r in doc["runs"]:
        groups.setdefault((r["role"], r["sampler"], r["steps"]), []).append(r)
    rows = []
    ref = None
    for (role, sampler, steps), rs in groups.items():
        p = np.array([r["psnr_db"] for r in rs])
        row = {"role": role, "sampler": sampler, "steps": steps, "nfe": rs[0]["nfe"],
               "seeds": sorted(r["seed"] for r in rs),
               "psnr_mean": float(p.mean()), "psnr_sd": float(p.std(ddof=1)) if len(p) > 1 else 0.0,
               "psnr_min": float(p.min()), "psnr_max": float(p.max()),
               "mae_mean": float(np.mean([r["mae_hu"] for r in rs])),
               "wall_s_mean": float(np.mean([r["wall_s"] for r in rs]))}
        rows.append(row)
        if role == "reference":
            ref = row
    rows.sort(key=lambda r: (r["role"] != "reference", r["sampler"], r["steps"]))
    rec = {}
    if ref:
        for r in rows:
            r["delta_db"] = r["psnr_mean"] - ref["psnr_mean"]
        for s in sorted({r["sampler"] for r in rows if r["role"] == "sweep"}):
            ok = sorted(r["steps"] for r in rows if r["role"] == "sweep" and r["sampler"] == s
                        and r["delta_db"] >= -doc["tolerance_db"])
            rec[s] = ok[0] if ok else None
            # the stricter reading: every larger step count tried is within the tolerance as well
            tried = sorted(r["steps"] for r in rows if r["role"] == "sweep" and r["sampler"] == s)
            stable = [k for k in tried if all(r["delta_db"] >= -doc["tolerance_db"] for r in rows
                                              if r["role"] == "sweep" and r["sampler"] == s and r["steps"] >= k)]
            rec[s + "_stable"] = stable[0] if stable else None
    return {"rows": rows, "reference": ref, "recommended": rec}


def render(doc: dict) -> str:
    summ = doc["summary"]
    tol = doc["tolerance_db"]
    ref = summ["reference"]
    rl = f"{ref['sampler']}-{ref['steps']}" if ref else "reference"
    rows = []
    for r in summ["rows"]:
        d = r.get("delta_db")
        rows.append([r["sampler"] + (" (reference)" if r["role"] == "reference" else ""), r["steps"], f"{r['nfe']:.0f}",
                     len(r["seeds"]), f"{r['psnr_mean']:.2f} ± {r['psnr_sd']:.2f}",
                     f"{r['psnr_min']:.2f} / {r['psnr_max']:.2f}", "" if d is None else f"{d:+.2f}",
                     f"{r['mae_mean']:.1f}", f"{r['wall_s_mean']:.1f}",
                     "" if d is None or r["role"] == "reference" else ("yes" if d >= -tol else "no")])
    head = ["sampler", "steps", "NFE", "seeds", "PSNR dB (mean ± sd over seeds)", "min / max", f"Δ vs {rl} mean (dB)",
            "MAE HU (mean)", "wall s per run", f"within {tol} dB"]
    loads = [r["load_average"] for r in doc["runs"] if "load_average" in r]
    load = f" (1-min load average {min(loads):.1f}-{max(loads):.1f} at the end of the runs)" if loads else ""
    text = [f"Machine: {machine_line(doc['machine'])}. Commit at time of measurement: {doc['commit']} "
            "(the working tree may contain uncommitted changes). Wall times come from a machine shared with other "
            f"jobs{load} and carry large noise; the PSNRs do not depend on it.", "",
            f"Command: `{doc['command']}`"
            + (f" (reusing the runs of `{doc['reused_from']}`)" if doc.get("reused_from") else ""), "",
            f"Model `{doc['model']}`, case `{doc['case']}`: {doc['slices']} central slices of {doc['slices_full']}, "
            f"{doc['samples']} Monte-Carlo sample(s) per slice (sCT = their mean), PSNR/MAE in the body mask.", "",
            markdown_table(head, rows, ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---"])]
    if ref:
        per_seed = ", ".join(f"seed {r['seed']}: {r['psnr_db']:.2f}" for r in doc["runs"] if r["role"] == "reference")
        text += ["", f"Reference runs ({rl}): {per_seed} dB."]
        for s in [k for k in summ["recommended"] if not k.endswith("_stable")]:
            if s in summ["recommended"]:
                k, ks = summ["recommended"][s], summ["recommended"].get(s + "_stable")
                text.append(f"Smallest {s} step count whose mean PSNR is within {tol} dB of the reference: "
                            + (f"**{k}**" if k else "none of those tried")
                            + (f"; smallest from which every larger count tried is also within: **{ks}**."
                               if ks else "."))
    return "\n".join(text)


def plot(doc: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    summ = doc["summary"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    extra = sorted({r["sampler"] for r in summ["rows"] if r["role"] == "sweep"} - {"dpmpp", "ddim", "ddpm"})
    for s, mk in [("dpmpp", "o-"), ("ddim", "s-"), ("ddpm", "^-")] + [(e, "d--") for e in extra]:
        rs = sorted((r for r in summ["rows"] if r["sampler"] == s and r["role"] == "sweep"), key=lambda r: r["nfe"])
        if rs:
            ax.errorbar([r["nfe"] for r in rs], [r["psnr_mean"] for r in rs], yerr=[r["psnr_sd"] for r in rs],
                        fmt=mk, capsize=3, label=f"{s} (mean ± sd over seeds)")
    ref = summ["reference"]
    if ref:
        ax.axhline(ref["psnr_mean"], color="k", lw=1,
                   label=f"{ref['sampler']} {ref['steps']} (mean of {len(ref['seeds'])} seeds)")
        ax.axhspan(ref["psnr_mean"] - doc["tolerance_db"], ref["psnr_mean"], color="0.85",
                   label=f"-{doc['tolerance_db']} dB")
        for r in doc["runs"]:
            if r["role"] == "reference":
                ax.plot([r["nfe"]], [r["psnr_db"]], "kx")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel("PSNR in body mask (dB)")
    ax.set_title(f"demo model: {doc['slices']} slices x {doc['samples']} MC samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled demo DDPM)")
    ap.add_argument("--case", default=None, help="case folder with mr/ct/mask (default: the bundled demo case)")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--dpmpp", type=int, nargs="*", default=[5, 8, 10, 12, 15, 20, 30, 50])
    ap.add_argument("--ddim", type=int, nargs="*", default=[10, 20, 50, 100, 200])
    ap.add_argument("--ddpm", type=int, nargs="*", default=[25, 50, 100, 200],
                    help="respaced ancestral DDPM step counts (stochastic; the reference's sampler)")
    ap.add_argument("--extra", nargs="*", default=[],
                    help="more sweep settings as LABEL:STEPS, LABEL = name or name(option=value,...), "
                         "e.g. 'dpmpp(t_spacing=uniform):10' or 'ddim(eta=1.0):50'")
    ap.add_argument("--reference", default="ddpm:1000")
    ap.add_argument("--reference-seeds", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--tolerance", type=float, default=0.3)
    ap.add_argument("--reuse", action="store_true", help="keep the matching runs already in --out")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "step_sweep_cpu.json"))
    args = ap.parse_args(argv)
    set_threads(args.threads)

    from MRtoCTSynthesisLib.models.methods import load_model

    model_path = Path(args.model) if args.model else demo_paths()[1]
    case = load_case(args.case, args.slices)
    model = load_model(model_path, args.device)
    out = Path(args.out)
    doc = {"command": command_line(), "commit": git_commit(), "machine": machine_info(args.device),
           "model": str(model_path.name), "case": case.name, "slices": int(case.mr.array.shape[0]),
           "slices_full": case.n_slices_full, "samples": args.samples, "tolerance_db": args.tolerance, "runs": []}
    if args.reuse and out.exists():
        old = json.loads(out.read_text())
        if (old.get("model"), old.get("case"), old.get("slices"), old.get("samples")) == \
                (doc["model"], doc["case"], doc["slices"], doc["samples"]):
            doc["runs"] = import_old(old)
            doc["reused_from"] = old.get("command")
            doc["reused_commit"] = old.get("commit")
            print(f"reusing {len(doc['runs'])} runs from {out}", flush=True)
    print(machine_line(doc["machine"]), flush=True)
    t_all = time.perf_counter()
    done = {(r["role"], r["sampler"], r["steps"], r["seed"]) for r in doc["runs"]}

    def save():
        doc["wall_s_total"] = time.perf_counter() - t_all
        doc["summary"] = summarise(doc)
        write_json(out, doc)
        out.with_suffix(".md").write_text(render(doc) + "\n")

    rname, rsteps = parse_spec(args.reference)
    plan = [("reference", rname, rsteps, s) for s in args.reference_seeds[:1]]
    plan += [("sweep", "dpmpp", k, s) for s in args.seeds for k in args.dpmpp]
    plan += [("sweep", "ddim", k, s) for s in args.seeds for k in args.ddim]
    plan += [("sweep", "ddpm", k, s) for s in args.seeds for k in args.ddpm]
    for spec in args.extra:
        label, _, k = spec.rpartition(":")
        plan += [("sweep", label, int(k), s) for s in args.seeds]
    plan += [("reference", rname, rsteps, s) for s in args.reference_seeds[1:]]
    for role, name, steps, seed in plan:
        if (role, name, steps, seed) in done:
            continue
        _, row = run_one(case, model, name, steps, args.samples, seed, args.device, role)
        doc["runs"].append(row)
        done.add((role, name, steps, seed))
        print(f"{role:9s} {name:6s} {steps:4d} steps seed {seed}: {row['psnr_db']:.2f} dB, MAE {row['mae_hu']:.1f} HU, "
              f"{row['wall_s']:.1f} s", flush=True)
        save()
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    save()
    plot(doc, out.with_suffix(".png"))
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
