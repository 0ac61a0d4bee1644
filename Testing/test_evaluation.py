"""Batch evaluation (``mrtoct evaluate --models``): table statistics, calibration, figures, CLI behaviour.

Numbers are checked against independent computations (numpy, an exact enumeration of the Wilcoxon null
distribution, scipy.stats, brute-force loops), never against values copied from a run.
"""

import contextlib
import csv
import io
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from MRtoCTSynthesisLib.apps import evaluation as ev
from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.assets import DEMO_MODEL

REPO = Path(__file__).resolve().parents[1]


# ================================================================================================ table
def _exact_wilcoxon_p(d):
    """Two-sided exact signed-rank p by enumerating all 2^n sign patterns (no ties, no zeros)."""
    d = np.asarray(d, dtype=float)
    ranks = stats.rankdata(np.abs(d))
    w_obs = ranks[d > 0].sum()
    w_all = np.array([sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(d))])
    return min(1.0, 2 * min(np.mean(w_all <= w_obs), np.mean(w_all >= w_obs)))


def _per_case_fixture():
    cases = [f"c{i}" for i in range(6)]
    psnr_a = [30.1, 28.7, 31.4, 29.9, 27.2, 30.6]
    diffs = [1.3, -0.4, 2.2, 0.7, -1.9, 3.1]          # distinct |d|: the exact null applies
    psnr_b = [a - d for a, d in zip(psnr_a, diffs)]
    per_case = {"A": {}, "B": {}, "C": {}}
    for i, c in enumerate(cases):
        per_case["A"][c] = {"psnr_db": psnr_a[i], "ssim": 0.80 + 0.01 * i, "mae_hu": 50.0 + 3 * i, "me_hu": -2.0 + i,
                            "nfe": 20, "seconds_per_slice": 0.1 + 0.01 * i}
        per_case["B"][c] = {"psnr_db": psnr_b[i], "ssim": 0.80 + 0.01 * i - 0.002 * (i + 1),
                            "mae_hu": 52.0 + 2.5 * i + 0.1 * i * i, "me_hu": -2.0 + i, "nfe": 100,
                            "seconds_per_slice": 0.5}
    per_case["C"] = {"c0": {"psnr_db": 20.0, "ssim": 0.5, "mae_hu": 90.0, "me_hu": 1.0, "nfe": 1,
                            "seconds_per_slice": 0.01}}  # only one case: no paired test
    return per_case


def test_table_statistics_match_numpy_and_exact_wilcoxon():
    per_case = _per_case_fixture()
    rows = ev.summarize_methods(per_case, ["A", "B", "C"])
    by = {r["method"]: r for r in rows}
    # best = highest mean PSNR, by an independent computation
    means = {m: np.mean([v["psnr_db"] for v in per_case[m].values()]) for m in per_case}
    assert [r["method"] for r in rows if r["best"]] == [max(means, key=means.get)] == ["A"]
    for m in ("A", "B"):
        for key in ("psnr_db", "ssim", "mae_hu", "me_hu"):
            vals = np.array([v[key] for v in per_case[m].values()])
            assert by[m][f"{key}_mean"] == pytest.approx(np.mean(vals), rel=1e-12)
            assert by[m][f"{key}_std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-12)  # stated: ddof = 1
            assert by[m][f"{key}_n"] == 6
    assert math.isnan(by["C"]["psnr_db_std"]) and by["C"]["psnr_db_n"] == 1
    # p-values of B against the best (A), per metric: exact enumeration for PSNR, scipy as reference for all
    d_psnr = [per_case["B"][c]["psnr_db"] - per_case["A"][c]["psnr_db"] for c in per_case["A"]]
    assert by["B"]["p_psnr_db"] == pytest.approx(_exact_wilcoxon_p(d_psnr), rel=1e-12)
    for key in ("psnr_db", "ssim", "mae_hu"):
        x = [per_case["B"][c][key] for c in per_case["A"]]
        y = [per_case["A"][c][key] for c in per_case["A"]]
        assert by["B"][f"p_{key}"] == pytest.approx(stats.wilcoxon(x, y).pvalue, rel=1e-12)
    # ME is identical in A and B: every difference is zero -> undefined, and said so
    assert by["B"]["p_me_hu"] is None and "zero" in by["B"]["p_me_hu_note"]
    assert by["C"]["p_psnr_db"] is None and "fewer than 2" in by["C"]["p_psnr_db_note"]
    assert all(by["A"][f"p_{k}"] is None for k in ("psnr_db", "ssim", "mae_hu", "me_hu"))
    assert by["A"]["nfe"] == 20 and by["A"]["s_per_slice"] == pytest.approx(np.mean([0.1 + 0.01 * i for i in range(6)]))


def test_exact_p_for_n6_and_undefined_cases():
    d = {f"c{i}": v for i, v in enumerate([0.5, -1.5, 2.5, 3.5, 4.5, -5.5])}
    zero = {c: 0.0 for c in d}
    p, note = ev.paired_wilcoxon(d, zero)
    assert note == "" and p == pytest.approx(_exact_wilcoxon_p(list(d.values())), rel=1e-12)
    assert ev.paired_wilcoxon({"a": 1.0}, {"a": 2.0})[0] is None
    assert ev.paired_wilcoxon({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}) == (None, "all paired differences are zero")
    # non-finite values are not paired
    assert ev.paired_wilcoxon({"a": 1.0, "b": math.inf}, {"a": 2.0, "b": 3.0})[0] is None


def test_markdown_and_csv_layout():
    rows = ev.summarize_methods(_per_case_fixture(), ["A", "B", "C"])
    md = ev.format_markdown_table(rows)
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Method", "n", "PSNR (dB)", "SSIM", "MAE (HU)", "ME (HU)", "p PSNR", "p SSIM", "p MAE", "p ME",
                      "NFE", "s/slice"]
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert [r[0] for r in body] == ["**A**", "B", "C"]
    assert all(len(r) == len(header) for r in body)
    vals = [r["psnr_db"] for r in _per_case_fixture()["A"].values()]
    assert body[0][2] == f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}"
    assert body[0][6:10] == ["—"] * 4 and body[1][9] == "—" and body[2][6] == "—"
    assert "all paired differences are zero" in md and "fewer than 2 paired cases" in md and "ddof = 1" in md
    table = list(csv.DictReader(md_csv := ev.format_csv_table(rows).splitlines()))
    assert md_csv[0].split(",") == list(ev.CSV_COLUMNS)
    assert [t["method"] for t in table] == ["A", "B", "C"] and table[0]["best"] == "True"
    assert float(table[1]["p_psnr_db"]) == pytest.approx(rows[1]["p_psnr_db"], rel=1e-12)
    assert table[1]["p_me_hu"] == "" and table[2]["psnr_db_std"] == ""


# ========================================================================================== calibration
def _brute_sparsification(u, e, fractions):
    """Remove the floor(f n) most uncertain voxels one by one (no ties in u) and average the rest."""
    order = sorted(range(len(u)), key=lambda i: -u[i])
    out = []
    for f in fractions:
        k = int(math.floor(f * len(u) + 1e-9))
        rest = [e[i] for i in order[k:]]
        out.append(sum(rest) / len(rest))
    return np.array(out)


def test_perfect_uncertainty_gives_zero_ause_and_unit_correlation():
    rng = np.random.default_rng(1)
    err = np.abs(rng.normal(0, 40, 5000))
    cs = ev.calibration_stats(err.copy(), err)
    assert cs["ause"] == 0.0
    assert cs["pearson"] == pytest.approx(1.0, abs=1e-12) and cs["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert np.array_equal(cs["curve"], cs["oracle"])
    assert cs["curve"][0] == pytest.approx(err.mean(), rel=1e-12) and cs["mae0"] == pytest.approx(err.mean())


def test_independent_uncertainty_is_flat_and_oracle_monotone():
    rng = np.random.default_rng(2)
    n = 400_000
    err = np.abs(rng.normal(0, 50, n))
    std = rng.uniform(0, 30, n)  # independent of the error
    cs = ev.calibration_stats(std, err)
    curve = np.asarray(cs["curve"])
    assert np.all(np.abs(curve / err.mean() - 1) < 0.05)          # within 5 % of the total MAE at every fraction
    assert np.allclose(cs["random"], err.mean())
    assert cs["ause"] > 0.2                                        # far from the oracle
    assert abs(cs["pearson"]) < 0.01 and abs(cs["spearman"]) < 0.01
    orc = np.asarray(cs["oracle"])
    assert np.all(np.diff(orc) <= 1e-9 * err.mean())               # non-increasing
    assert orc[-1] < 0.1 * err.mean()


def test_curves_match_brute_force_and_scipy_correlations():
    rng = np.random.default_rng(3)
    err = np.abs(rng.normal(0, 1, 300))
    u = err + rng.normal(0, 0.5, 300)                               # partially informative, no ties
    f = ev.DEFAULT_FRACTIONS
    assert np.allclose(ev.sparsification_curve(u, err, f), _brute_sparsification(u, err, f), rtol=1e-12)
    assert np.allclose(ev.oracle_curve(err, f), _brute_sparsification(err, err, f), rtol=1e-12)
    curve, orc = _brute_sparsification(u, err, f), _brute_sparsification(err, err, f)
    area = sum((f[i + 1] - f[i]) * ((curve[i] - orc[i]) + (curve[i + 1] - orc[i + 1])) / 2 for i in range(len(f) - 1))
    assert ev.ause(ev.sparsification_curve(u, err, f), ev.oracle_curve(err, f), f) == pytest.approx(area / err.mean())
    # a constant uncertainty cannot rank anything: expected curve = random removal = the overall mean
    assert np.allclose(ev.sparsification_curve(np.zeros(300), err, f), err.mean(), rtol=1e-12)
    # correlations, with ties in the data (rounded values)
    x, y = np.round(u, 1), np.round(err, 1)
    assert ev.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], rel=1e-10)
    assert ev.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], rel=1e-10)
    assert math.isnan(ev.pearson(np.ones(5), np.arange(5)))


def test_figure_helpers_pick_the_body_slice_and_the_error_hot_spot():
    mask = np.zeros((5, 20, 20), dtype=bool)
    mask[1, 5:15, 5:15] = True
    mask[3, 2:18, 2:18] = True
    assert ev.central_body_slice(mask) == 3
    assert ev.central_body_slice(None, 7) == 3
    err = np.zeros((40, 40))
    err[30:33, 8:11] = 500.0
    r0, r1, c0, c1 = ev.highest_error_roi([err, err * 0.5], None, (1.0, 1.0))
    assert r0 <= 30 and r1 >= 33 and c0 <= 8 and c1 >= 11 and r1 - r0 == c1 - c0 == 12


# ================================================================================================ CLI
MODEL = str(DEMO_MODEL)


@pytest.fixture(scope="module")
def evaluation_run(tiny_phantom_cases, tmp_path_factory, one_torch_thread):
    """One batch evaluation through the CLI: the demo DDPM with two samplers plus their DDMM-Synth rows, and an
    untrained one-call UNet-CNN (a fixed-sampler, deterministic method)."""
    import torch

    from MRtoCTSynthesisLib.models.methods import create_model, save_model

    tmp = tmp_path_factory.mktemp("evaluation")
    torch.manual_seed(0)
    cnn = save_model(create_model("unet_cnn", 16), tmp / "cnn.safetensors")
    split = tmp / "split.json"
    split.write_text(json.dumps({"train": [], "test": ["case_000", "case_001"]}))
    out = tmp / "out"
    argv = ["evaluate", "--models", MODEL, str(cnn), "--data", str(tiny_phantom_cases), "--split", str(split),
            "--samplers", "dpmpp", "ddpm", "--steps", "2", "--samples", "2", "--projections", "23",
            "--figures", "1", "--device", "cpu", "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    return code, out, printed.getvalue()


def test_batch_evaluation_writes_complete_outputs(evaluation_run):
    code, out, printed = evaluation_run
    assert code == 0
    for name in ("table.md", "table.csv", "results.json", "calibration.json", "calibration.png",
                 "figures/case_000.png"):
        assert (out / name).is_file(), name
    assert not (out / "figures" / "case_001.png").exists()  # --figures 1: the first case only
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    labels = [m["label"] for m in res["methods"]]
    diffusion = ["ddpm/dpmpp-2", "ddpm/ddpm-2", "ddmm_synth/dpmpp-2 Np=23 σ=0", "ddmm_synth/ddpm-2 Np=23 σ=0"]
    assert labels == diffusion + ["unet_cnn"]
    assert res["cases"] == ["case_000", "case_001"]
    for case in res["cases"]:
        for lab in labels:
            r = res["per_case"][case][lab]
            for key in ("psnr_db", "ssim", "mae_hu", "me_hu", "seconds_per_slice", "mean_std_hu"):
                assert math.isfinite(r[key]), (case, lab, key)
            if lab in diffusion:
                assert r["nfe"] == 2 and r["run"]["samples"] == 2 and r["mean_std_hu"] > 0
            else:  # deterministic one-call method: one sample, one network call, no spread
                assert r["nfe"] == 1 and r["run"]["samples"] == 1 and r["mean_std_hu"] == 0
    ddmm = res["per_case"]["case_000"][labels[2]]["run"]
    assert ddmm["method"] == "ddmm_synth" and ddmm["measurements"]["n_projections"] == 23

    # table.csv: means/stds/p-values equal independent computations on the per-case numbers
    table = {t["method"]: t for t in csv.DictReader((out / "table.csv").read_text(encoding="utf-8").splitlines())}
    assert list(table) == labels
    psnr = {lab: [res["per_case"][c][lab]["psnr_db"] for c in res["cases"]] for lab in labels}
    best = max(labels, key=lambda lab: np.mean(psnr[lab]))
    assert [lab for lab in labels if table[lab]["best"] == "True"] == [best] == [res["best"]]
    for lab in labels:
        assert float(table[lab]["psnr_db_mean"]) == pytest.approx(np.mean(psnr[lab]), rel=1e-9)
        assert float(table[lab]["psnr_db_std"]) == pytest.approx(np.std(psnr[lab], ddof=1), rel=1e-9)
        if lab != best:
            ref = stats.wilcoxon(np.array(psnr[lab]) - np.array(psnr[best])).pvalue
            assert float(table[lab]["p_psnr_db"]) == pytest.approx(ref, rel=1e-9)
        else:
            assert table[lab]["p_psnr_db"] == ""
    md = (out / "table.md").read_text(encoding="utf-8")
    first, second = md.split("| Method")[1:3]  # the comparison table, then the uncertainty / input-check table
    rows = [ln for ln in first.splitlines() if ln.startswith("| ")]
    assert len(rows) == len(labels) and all(lab in md for lab in labels) and f"**{best}**" in md
    unc_rows = [ln for ln in second.splitlines() if ln.startswith("| ") and not ln.startswith("|---")]
    assert len(unc_rows) == len(labels) and "68 % coverage" in second and "95 % coverage" in second
    assert (out / "reliability.png").is_file()
    for lab in diffusion:  # K = 2: coverage of the intervals is a fraction, reported per case
        for case in ("case_000", "case_001"):
            r = res["per_case"][case][lab]
            assert 0.0 <= r["coverage68"] <= r["coverage95"] <= 1.0
    assert "| Method" in printed and "[10/10] case_001" in printed and "deterministic" in printed
    assert str(out.resolve()) in printed

    # figures: readable PNGs of the documented size, one row per method
    from matplotlib.image import imread

    from MRtoCTSynthesisLib.apps import figures

    w_in, h_in = figures.GRID_PANEL_INCHES
    img = imread(out / "figures" / "case_000.png")
    assert img.shape[:2] == (round((h_in * len(labels) + figures.GRID_TITLE_INCHES) * figures.GRID_DPI),
                             round(w_in * len(figures.GRID_COLUMNS) * figures.GRID_DPI))
    assert img[..., :3].std() > 0.05  # not blank
    assert imread(out / "calibration.png").shape[0] > 100

    # calibration: every K = 2 method, finite numbers, curve >= oracle, curve[0] = MAE of the voxels used
    cal = json.loads((out / "calibration.json").read_text(encoding="utf-8"))
    assert set(cal["methods"]) == set(diffusion) and len(cal["fractions"]) == 100
    assert "K = 1" in cal["skipped"]["unet_cnn"]
    for lab, c in cal["methods"].items():
        assert all(math.isfinite(c[k]) for k in ("pearson", "spearman", "ause", "aurg", "mae0"))
        assert c["ause"] >= 0 and c["curve"][0] == pytest.approx(c["mae0"], rel=1e-9)
        assert np.all(np.asarray(c["curve"]) >= np.asarray(c["oracle"]) - 1e-9)
        assert set(c["per_case"]) == {"case_000", "case_001"}


def _error_run(argv, capsys):
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def test_bad_inputs_exit_2_and_write_nothing(tiny_phantom_cases, tmp_path, capsys):
    data = str(tiny_phantom_cases)
    out = tmp_path / "out"
    runs = [
        (["evaluate", "--models", str(tmp_path / "missing.safetensors"), "--data", data, "--out", str(out)],
         "missing.safetensors"),
        (["evaluate", "--models", MODEL, "--out", str(out)], "without --data"),
        (["evaluate", "--data", data, "--out", str(out)], "without --models"),
        (["evaluate", "--models", MODEL, "--data", data, "--samplers", "syndiff", "--out", str(out)],
         "sampler 'syndiff' does not work with method 'ddpm'"),
        (["evaluate", "--models", MODEL, "--data", str(tmp_path / "nodata"), "--out", str(out)], "does not exist"),
        (["evaluate", "--models", MODEL, "--data", data, "--noise-sigma", "0.1", "--out", str(out)], "--noise-sigma"),
        (["evaluate", "--models", MODEL, "--data", data, "--projections", "0", "--out", str(out)], "--projections"),
        (["evaluate", "--out", str(out)], "nothing to evaluate"),
        (["evaluate", "--pred", "a.nii.gz", "--models", MODEL, "--data", data], "were both given"),
        (["evaluate", "--models", MODEL, "--data", data, "--json", "x.json", "--out", str(out)], "--json"),
    ]
    for argv, needle in runs:
        code, err = _error_run(argv, capsys)
        assert code == 2, argv
        assert "error:" in err and needle in err and "Fix:" in err, (argv, err)
    assert not out.exists()  # nothing written, not even the folder
    with pytest.raises(SystemExit) as exc:  # a sampler name that does not exist at all: argparse, status 2
        main(["evaluate", "--models", MODEL, "--data", data, "--samplers", "nosuch"])
    assert exc.value.code == 2


def test_single_sct_mode_still_works(tiny_phantom_cases, tmp_path, capsys):
    ct = tiny_phantom_cases / "case_000" / "ct.nii.gz"
    js = tmp_path / "m.json"
    assert main(["evaluate", "--pred", str(ct), "--ref", str(ct), "--json", str(js)]) == 0
    assert json.loads(js.read_text(encoding="utf-8"))["mae_hu"] == 0.0
    code, err = _error_run(["evaluate", "--pred", str(ct)], capsys)
    assert code == 2 and "--ref missing" in err


def test_training_script_from_a_fresh_checkout(tmp_path):
    """training/evaluate.py runs without the package installed (it puts MRtoCTSynthesis/ on sys.path)."""
    script = REPO / "training" / "evaluate.py"
    lib_dir = str(REPO / "MRtoCTSynthesis")
    probe = ("import runpy, sys, importlib.abc\n"
             "class Block(importlib.abc.MetaPathFinder):  # behave as if the package were not installed\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             f"        if name == 'MRtoCTSynthesisLib' and {lib_dir!r} not in sys.path:\n"
             "            raise ImportError('simulated: MRtoCTSynthesisLib is not installed')\n"
             "sys.meta_path.insert(0, Block())\n"
             "sys.argv = ['evaluate.py', '--help']\n"
             f"runpy.run_path({str(script)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, encoding="utf-8",
                          errors="replace", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--models", "--data", "--split", "--samplers", "--steps", "--samples", "--projections",
                 "--noise-sigma", "--cases", "--out", "--device", "--seed"):
        assert flag in proc.stdout
    # and it reports bad inputs like the CLI (in this process: same code, no second interpreter start-up)
    import runpy

    script_main = runpy.run_path(str(script), run_name="evaluate_script")["main"]
    missing = tmp_path / "none.safetensors"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = script_main(["--models", str(missing), "--data", str(tmp_path)])
    assert code == 2 and f"error: model file {missing} does not exist" in err.getvalue() and "Fix:" in err.getvalue()
