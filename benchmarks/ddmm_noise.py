"""DDMM-Synth under measurement noise: MAE/PSNR/SSIM of the MRI alone and of the N-SMI blocks (run on demand).

    OMP_NUM_THREADS=1 python benchmarks/ddmm_noise.py [--model CKPT] [--case DIR] [--slices 6]
        [--sigmas 0 0.05 0.1 0.3 1% 3%] [--projections 10 20 23 60] [--blocks noiseless noisy auto]
        [--sampler ddim] [--steps 50] [--seed 0] [--reuse] [--write-readme]
        [--out benchmarks/results/ddmm_noise_cpu.json]

Every run synthesises the same central ``--slices`` axial slices of the case (default: the bundled demo case
and model) with one sample and scores the sCT against the case's CT inside the body mask with
:func:`MRtoCTSynthesisLib.pipeline.metrics.evaluate` (preset ``default``: MAE in HU, PSNR in dB, mean per-slice
2D SSIM). Rows: ``mri alone`` (no measurements, once), and for every ``--projections`` N_p x ``--sigmas`` per-bin
noise sigma (an absolute value in model units x pixel lengths, or ``P%`` = P per cent of the RMS sinogram value
over the rays that cross the body, measured on the noiseless sinograms of the slices): the blocks of
``--nsmi`` -- ``noiseless`` (DDMM-Synth Eq. 5, exact A+), ``noisy`` (Eqs. 7-13 with the exact A+, as the paper
writes it) and ``auto`` (noiseless at sigma 0; the Wiener-filtered noisy block of
:class:`~MRtoCTSynthesisLib.models.methods.ddmm_synth.WienerNullSpaceProjection` above it, or the MRI alone when
the data carry no information). At sigma 0 ``noisy`` and ``auto`` are the noiseless block and are not run
again. The measurement noise is seeded with the synthesis seed (the same noise for every block).

The JSON is rewritten after every run (``--reuse`` keeps finished rows); a Markdown table goes next to it and,
with ``--write-readme``, between the ``ddmm_noise`` markers of ``benchmarks/README.md`` (and an MAE-only table
between the ``ddmm_noise_readme`` markers of the top-level ``README.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    HERE,
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


def parse_sigma(text: str) -> tuple[str, float | None, float | None]:
    """``"0.3"`` -> ("0.3", 0.3, None); ``"1%"`` -> ("1%", None, 0.01)."""
    if text.endswith("%"):
        return text, None, float(text[:-1]) / 100.0
    return text, float(text), None


def ray_scale(case, model, n_p: int) -> float:
    """RMS of the noiseless sinogram values over the rays that cross the body (model units x pixels)."""
    from MRtoCTSynthesisLib.pipeline.measurements import measurements_from_ct
    from MRtoCTSynthesisLib.pipeline.synthesis import square_grid_size

    size = square_grid_size(model, case.mr)
    import torch

    meas = measurements_from_ct(case.mr, case.ct, size, n_p, 0.0)
    y = meas.sinograms.double()
    air = meas.operator.forward(-torch.ones(1, 1, size, size)).double()  # -1 = -1024 HU everywhere
    body = (y - air).abs() > 1e-3  # rays whose line integral differs from pure air
    return float(y[body].pow(2).mean().sqrt())


def run_one(case, model, block: str | None, n_p: int, sigma: float, args) -> dict:
    from MRtoCTSynthesisLib.pipeline.measurements import MeasurementSpec
    from MRtoCTSynthesisLib.pipeline.metrics import evaluate
    from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize

    opts = SynthesisOptions(sampler=args.sampler, steps=args.steps, samples=1, seed=args.seed, device=args.device)
    spec = None
    if block is not None:
        opts = dataclasses.replace(opts, nsmi=block)
        spec = MeasurementSpec(ct=case.ct, projections=n_p, noise_sigma=sigma)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = synthesize(case.mr, model, opts, measurements=spec)
    seconds = time.perf_counter() - t0
    m = evaluate(res.sct, case.ct, case.mask)
    meas = res.info.get("measurements", {})
    return {"mae_hu": m["mae_hu"], "psnr_db": m["psnr_db"], "ssim": m["ssim"], "ssim_mode": m["ssim_mode"],
            "metrics_preset": m.get("preset", "default"), "seconds": seconds, "method": res.info["method"],
            "nsmi": meas.get("nsmi"), "sigma_n_image": meas.get("sigma_n_image"),
            "informative_fraction": meas.get("informative_fraction"), "sampler_options": res.info["sampler_options"]
            if "sampler_options" in res.info else {}, "notes": [str(w.message) for w in caught][:3]}


def table(doc: dict) -> str:
    rows = []
    by_key = {(r["block"], r["n_projections"], r["sigma_label"]): r for r in doc["runs"]}
    mri = by_key.get(("mri alone", None, None))
    header = ["N_p", "per-bin sigma", "sigma (abs)", "MRI alone MAE / PSNR / SSIM"]
    blocks = doc["settings"]["blocks"]
    header += [f"{b} MAE / PSNR / SSIM" for b in blocks] + ["auto chose"]

    def cell(r):
        if r is None:
            return ""
        return f"{r['mae_hu']:.1f} / {r['psnr_db']:.2f} / {r['ssim']:.4f}"

    for n_p in doc["settings"]["projections"]:
        for label in doc["settings"]["sigmas"]:
            base = by_key.get(("noiseless", n_p, label))
            if base is None:
                continue
            row = [n_p, label, f"{base['sigma']:.3g}", cell(mri)]
            for b in blocks:
                r = by_key.get((b, n_p, label))
                if r is None and base["sigma"] == 0:
                    r = base  # at sigma 0 every block is the noiseless one
                row.append(cell(r))
            auto = by_key.get(("auto", n_p, label))
            row.append((auto or base)["nsmi"])
            rows.append(row)
    return markdown_table(header, rows, ["---:", "---:", "---:", "---:"] + ["---:"] * len(blocks) + ["---"])


def short_table(doc: dict) -> str:
    """MAE only (HU): one row per N_p x sigma, for the top-level README."""
    by_key = {(r["block"], r["n_projections"], r["sigma_label"]): r for r in doc["runs"]}
    mri = by_key.get(("mri alone", None, None))
    rows = []
    for n_p in doc["settings"]["projections"]:
        for label in doc["settings"]["sigmas"]:
            base = by_key.get(("noiseless", n_p, label))
            if base is None:
                continue
            cells = []
            for b in ("noiseless", "noisy", "auto"):
                r = by_key.get((b, n_p, label)) or (base if base["sigma"] == 0 else None)
                cells.append("" if r is None else f"{r['mae_hu']:.1f}")
            auto = by_key.get(("auto", n_p, label)) or base
            rows.append([n_p, label, f"{base['sigma']:.3g}", f"{mri['mae_hu']:.1f}" if mri else "", *cells,
                         auto["nsmi"]])
    return markdown_table(["N_p", "per-bin sigma", "sigma (abs)", "MRI alone", "noiseless", "noisy", "auto",
                           "auto chose"], rows, ["---:"] * 7 + ["---"])


def _replace_between(path: Path, begin: str, end: str, text: str) -> None:
    content = path.read_text()
    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        path.write_text(head + begin + "\n" + text + end + rest.split(end, 1)[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model")
    p.add_argument("--case")
    p.add_argument("--slices", type=int, default=6)
    p.add_argument("--sigmas", nargs="+", default=["0", "0.05", "0.1", "0.3", "1%", "3%"])
    p.add_argument("--projections", type=int, nargs="+", default=[10, 20, 23, 60])
    p.add_argument("--blocks", nargs="+", default=["noiseless", "noisy", "auto"],
                   choices=["noiseless", "noisy", "auto"])
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--write-readme", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "ddmm_noise_cpu.json"))
    args = p.parse_args(argv)
    set_threads(args.threads)

    from MRtoCTSynthesisLib.models.methods import load_model

    model_path = Path(args.model) if args.model else demo_paths()[1]
    model = load_model(model_path)
    case = load_case(args.case, args.slices)
    out = Path(args.out)
    settings = {"model": model_path.name, "case": case.name, "slices": args.slices, "sampler": args.sampler,
                "steps": args.steps, "seed": args.seed, "sigmas": args.sigmas, "projections": args.projections,
                "blocks": args.blocks, "device": args.device}
    doc = {"settings": settings, "machine": machine_info(args.device), "command": command_line(),
           "commit": git_commit(), "metrics_preset": "default", "runs": []}
    if args.reuse and out.exists():
        import json

        old = json.loads(out.read_text())
        if {k: v for k, v in old.get("settings", {}).items() if k not in ("sigmas", "projections", "blocks")} == \
                {k: v for k, v in settings.items() if k not in ("sigmas", "projections", "blocks")}:
            doc["runs"] = old["runs"]
            doc["machine_of_runs"] = old.get("machine")
            doc["command_of_runs"] = old.get("command")
    done = {(r["block"], r["n_projections"], r["sigma_label"]) for r in doc["runs"]}

    def record(key, row):
        doc["runs"] = [r for r in doc["runs"] if (r["block"], r["n_projections"], r["sigma_label"]) != key]
        doc["runs"].append(row)
        doc["seconds_total"] = sum(r["seconds"] for r in doc["runs"])
        write_json(out, doc)
        print(f"{key}: MAE {row['mae_hu']:.1f} HU, PSNR {row['psnr_db']:.2f} dB, SSIM {row['ssim']:.4f} "
              f"({row.get('nsmi')}, {row['seconds']:.1f} s)", flush=True)

    key = ("mri alone", None, None)
    if key not in done:
        record(key, {"block": "mri alone", "n_projections": None, "sigma_label": None, "sigma": None,
                     **run_one(case, model, None, 0, 0.0, args)})
    for n_p in args.projections:
        scale = None
        for label in args.sigmas:
            _, absolute, fraction = parse_sigma(label)
            if absolute is None:
                scale = ray_scale(case, model, n_p) if scale is None else scale
                absolute = fraction * scale
            for block in args.blocks:
                if absolute == 0 and block != "noiseless":
                    continue
                key = (block, n_p, label)
                if key in done:
                    continue
                record(key, {"block": block, "n_projections": n_p, "sigma_label": label, "sigma": absolute,
                             "ray_rms": scale, **run_one(case, model, block, n_p, absolute, args)})
    machine = doc.get("machine_of_runs") or doc["machine"]
    command = doc.get("command_of_runs") or doc["command"]
    seconds = sum(r["seconds"] for r in doc["runs"])
    md = (f"Machine: {machine_line(machine)}. Command: `{command}` ({seconds:.0f} s of synthesis in all). "
          f"Case {case.name}, {args.slices} central slices, model {model_path.name}, {args.sampler} {args.steps} "
          f"steps, 1 sample, seed {args.seed}; metrics preset "
          f"`default` inside the body mask (MAE HU / PSNR dB / SSIM).\n\n" + table(doc) + "\n")
    out.with_suffix(".md").write_text(md)
    print(md)
    if args.write_readme:
        _replace_between(HERE / "README.md", "<!-- ddmm_noise:begin -->", "<!-- ddmm_noise:end -->", md)
        _replace_between(HERE.parent / "README.md", "<!-- ddmm_noise_readme:begin -->",
                         "<!-- ddmm_noise_readme:end -->", short_table(doc) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
