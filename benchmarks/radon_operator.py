"""Benchmark of the sparse-matrix Radon operator (DDMM-Synth's A) and of N-SMI's cost per sampling step.

For each grid and number of views: building the sparse matrix, preparing the pseudo-inverse (Gram matrix +
Cholesky factor, or the conjugate-gradient setup), and applying A, A^T, A+ and FBP to a batch of 16,
against scikit-image's ``radon`` / ``iradon`` (one image at a time; timed on 2 images and scaled to 16).
Then the time N-SMI adds to one DDIM step of the tiny 64 x 64 model (batch 16, 23 views).

    OMP_NUM_THREADS=1 python benchmarks/radon_operator.py --threads 1 --write-readme   # benchmarks/README.md
    python benchmarks/radon_operator.py --quick         # 64 x 64 and 128 x 128 only (~30 s)

Results go to ``benchmarks/results/radon_operator_cpu.json`` (``--json``); ``--write-readme`` replaces the
table between the ``radon_operator`` markers of ``benchmarks/README.md``. On a machine whose cores are busy
with other work, use one thread: torch's two OpenMP threads then wait on each other and every operation,
the network included, runs many times slower.

Timings are medians of ``--repeats`` runs after one warm-up, with ``torch.set_num_threads(--threads)``.
Memory is what the operator holds: the CSR arrays of A and A^T and the dense float64 factor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from MRtoCTSynthesisLib.operators import RadonOperator
from MRtoCTSynthesisLib.operators import radon as radon_module

README = Path(__file__).with_name("README.md")
RESULTS = Path(__file__).with_name("results") / "radon_operator_cpu.json"
BEGIN, END = "<!-- radon_operator:begin -->", "<!-- radon_operator:end -->"
BATCH = 16


def _time(fn, repeats, min_seconds=0.5):
    """Median wall time of ``fn`` over at least ``repeats`` runs (more for fast ones, up to ``min_seconds``)."""
    fn()  # warm-up
    out = []
    start = time.perf_counter()
    while len(out) < repeats or (time.perf_counter() - start < min_seconds and len(out) < 50):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _phantom(n):
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)


def bench_geometry(n, n_p, repeats, skimage_images, cg_max_iter):
    """One row of the table (a dict of plain values)."""
    from skimage.transform import iradon, radon

    img = _phantom(n)
    x = torch.from_numpy(np.stack([np.roll(img, k, axis=1) for k in range(BATCH)]))[:, None]
    t = time.perf_counter()
    op = RadonOperator(n, n_p)
    build = time.perf_counter() - t
    y = op.forward(x)
    row = {"grid": f"{n}x{n}", "views": n_p, "rays": op.n_rows, "nnz_M": op.nnz / 1e6, "build_s": build}
    old_max = radon_module.CG_MAX_ITER
    try:
        if op.method == "cg":  # a CG call can take minutes: time a capped number of iterations
            radon_module.CG_MAX_ITER = cg_max_iter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t = time.perf_counter()
            op.factorize()
            row["pinv_setup_s"] = time.perf_counter() - t
            row["pinv"] = f"{op.method}/{op.gram_side}" if op.method == "cholesky" else "cg"
            mem = op.memory_bytes()
            row["matrix_MB"], row["factor_MB"] = mem["matrix"] / 2 ** 20, mem["factor"] / 2 ** 20
            row["A_ms"] = 1e3 * _time(lambda: op.forward(x), repeats)
            row["At_ms"] = 1e3 * _time(lambda: op.adjoint(y), repeats)
            if op.method == "cg":
                op.cg_iterations.clear()
                t = time.perf_counter()
                op.pinv(y)
                row["pinv_ms"] = 1e3 * (time.perf_counter() - t)
                row["cg_iters"] = op.cg_iterations[-1]
            else:
                row["pinv_ms"] = 1e3 * _time(lambda: op.pinv(y), repeats)
            row["fbp_ms"] = 1e3 * _time(lambda: op.fbp(y), repeats)
    finally:
        radon_module.CG_MAX_ITER = old_max
    theta = op.angles_deg
    sino = radon(img, theta=theta, circle=False)
    t = time.perf_counter()
    for _ in range(skimage_images):
        radon(img, theta=theta, circle=False)
    row["sk_radon_ms"] = 1e3 * (time.perf_counter() - t) / skimage_images * BATCH
    t = time.perf_counter()
    for _ in range(skimage_images):
        iradon(sino, theta=theta, circle=False, filter_name="ramp", output_size=n)
    row["sk_iradon_ms"] = 1e3 * (time.perf_counter() - t) / skimage_images * BATCH
    rel = float(np.linalg.norm(y[0, 0].numpy() - sino.T) / np.linalg.norm(sino))
    row["vs_skimage"] = rel
    return row


def bench_nsmi_step(repeats, steps=5):
    """Seconds per DDIM step of the tiny 64 x 64 model for 16 slices, without and with N-SMI (23 views)."""
    from MRtoCTSynthesisLib.models.methods import create_model
    from MRtoCTSynthesisLib.models.methods.ddmm_synth import DDMMSynth, NullSpaceProjection
    from MRtoCTSynthesisLib.operators import get_operator

    torch.manual_seed(0)
    model = DDMMSynth.from_model(create_model("ddpm", 64))
    cond = torch.rand(BATCH, 1, 64, 64) * 2 - 1
    op = get_operator(64, 23).factorize()
    y = op.forward(torch.rand(BATCH, 1, 64, 64) * 2 - 1)
    sampler = model.make_sampler("ddim", steps)
    hook = NullSpaceProjection(op, y)
    runs = {None: [], hook: []}
    for k in range(repeats + 1):  # interleaved, so that load changes on a shared machine hit both alike
        for h in runs:
            t = time.perf_counter()
            model.sample(cond, sampler, generator=torch.Generator().manual_seed(0), x0_hook=h)
            if k:  # the first round is a warm-up
                runs[h].append((time.perf_counter() - t) / steps)
    plain, nsmi = statistics.median(runs[None]), statistics.median(runs[hook])
    x0 = torch.rand(BATCH, 1, 64, 64)
    hook_only = _time(lambda: hook(x0, x0, None), repeats)
    return {"plain_s": plain, "nsmi_s": nsmi, "hook_s": hook_only}


COLUMNS = [("grid", "grid", "{}"), ("views", "N_p", "{}"), ("rays", "rays", "{}"), ("nnz_M", "nnz (M)", "{:.2f}"),
           ("matrix_MB", "A+A^T MB", "{:.0f}"), ("build_s", "build s", "{:.2f}"), ("pinv", "A+ via", "{}"),
           ("pinv_setup_s", "A+ setup s", "{:.1f}"), ("factor_MB", "factor MB", "{:.0f}"),
           ("A_ms", "A ms", "{:.1f}"), ("At_ms", "A^T ms", "{:.1f}"), ("pinv_ms", "A+ ms", "{:.0f}"),
           ("fbp_ms", "FBP ms", "{:.0f}"), ("sk_radon_ms", "skimage radon ms", "{:.0f}"),
           ("sk_iradon_ms", "skimage iradon ms", "{:.0f}"), ("vs_skimage", "rel. diff. to skimage", "{:.3f}")]


def table(rows):
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            v = r.get(key, "")
            cell = fmt.format(v) if v != "" else ""
            if key == "pinv_ms" and "cg_iters" in r:
                cell += f" ({r['cg_iters']} CG it., capped)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 and 128 grids only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skimage-images", type=int, default=2, help="images timed for scikit-image (scaled to 16)")
    ap.add_argument("--cg-max-iter", type=int, default=50, help="iterations timed for a CG pseudo-inverse")
    ap.add_argument("--write-readme", action="store_true", help="replace the table in benchmarks/README.md")
    ap.add_argument("--json", default=str(RESULTS), help="where to write the results (default %(default)s)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        plan = [(64, p) for p in (10, 23, 180)] + [(128, p) for p in (10, 23)]
    else:
        plan = [(256, p) for p in (10, 20, 23, 60, 180)] + [(512, 10), (512, 23)]
    t0 = time.perf_counter()
    rows = []
    for n, n_p in plan:
        rows.append(bench_geometry(n, n_p, args.repeats, args.skimage_images, args.cg_max_iter))
        print(f"{n}x{n} N_p={n_p}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    step = bench_nsmi_step(args.repeats)
    total = time.perf_counter() - t0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} logical CPUs, "
               f"torch {torch.__version__} with {args.threads} thread(s), no GPU, load average {load:.1f} at the end")
    command = " ".join(["python benchmarks/radon_operator.py"] + (argv if argv is not None else sys.argv[1:]))
    if os.environ.get("OMP_NUM_THREADS"):
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    text = "\n".join([
        f"Machine: {machine}. Command: `{command}` ({total:.0f} s in all). A batch of {BATCH} images/sinograms, "
        "float32 operator, float64 factor; scikit-image timed on "
        f"{args.skimage_images} images and scaled to {BATCH}.",
        "",
        table(rows),
        "",
        f"N-SMI per DDIM step, tiny 64x64 model, {BATCH} slices, 23 views (noiseless block): the hook itself "
        f"(A x0, A+ of the residual) takes {step['hook_s'] * 1e3:.1f} ms, "
        f"{100 * step['hook_s'] / step['plain_s']:.1f} % of a plain step ({step['plain_s'] * 1e3:.0f} ms; "
        f"{step['nsmi_s'] * 1e3:.0f} ms with N-SMI in the same interleaved runs, where the network's run-to-run "
        "spread on this shared machine is larger than the hook).",
    ])
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, "command": command, "seconds": total,
                                               "batch": BATCH, "rows": rows, "nsmi_step": step}, indent=2))
    if args.write_readme:
        body = README.read_text() if README.exists() else ""
        block = f"{BEGIN}\n{text}\n{END}"
        if BEGIN in body and END in body:
            body = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda m: block, body, flags=re.S)
        else:
            body = body.rstrip() + "\n\n" + block + "\n"
        README.write_text(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
