#!/usr/bin/env python
"""CPU cost of the UNet: the attention fast path, and the widths of the default model (issue 23).

    OMP_NUM_THREADS=1 python benchmarks/unet_cpu.py --out benchmarks/results/unet_cpu.json

Part 1, self-attention: ``scaled_dot_product_attention`` on strided q/k/v views (the UNet before the fix)
against contiguous ones (after), 4 heads of 8 channels, at 32x32 and 64x64 tokens, batch 1; the outputs
agree to float rounding. Part 2, candidate networks for 2 mm pixels: parameters, multiply-accumulates of the
convolutions per 192 x 192 image (a 384 mm field of view at 2 mm), and the forward time per 192 x 192 image
at batch 8 in inference mode (the minimum over ``--repeats`` interleaved rounds, which damps the noise of a
shared machine). Part 3, one 3x3 convolution per width and image size: the throughput (GMAC/s) that explains
the choice: 16-24-channel convolutions on large images run several times slower per MAC than 32+ channels on
smaller ones, so a full-resolution first level costs more than its MACs say, and the ``cpu`` preset folds 2x2
pixels into channels instead (space_to_depth).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MRtoCTSynthesis"))

from MRtoCTSynthesisLib.models.networks import UNET_PRESETS, ConditionalUNet, UNetConfig, count_parameters  # noqa: E402

CANDIDATES = {
    "tiny (today's demo net)": dict(UNET_PRESETS["tiny"]),
    "16ch, 4 levels, full-res stem": dict(base_channels=16, channel_mults=(1, 2, 2, 4), attention_levels=(3,)),
    "16ch, 5 levels, full-res stem": dict(base_channels=16, channel_mults=(1, 2, 2, 4, 4), attention_levels=(4,)),
    "s2d 32ch (1,2,2,2) = preset 'cpu'": dict(UNET_PRESETS["cpu"]),
    "s2d 32ch (1,2,2,4)": dict(space_to_depth=2, base_channels=32, channel_mults=(1, 2, 2, 4), attention_levels=(3,)),
    "s2d 32ch (1,2,2,4,4)": dict(space_to_depth=2, base_channels=32, channel_mults=(1, 2, 2, 4, 4),
                                 attention_levels=(4,)),
    "s2d 48ch (1,2,2,4)": dict(space_to_depth=2, base_channels=48, channel_mults=(1, 2, 2, 4), attention_levels=(3,)),
}


def best_time(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def attention_part(repeats):
    rows = []
    for side in (32, 64):
        hw = side * side
        qkv = torch.randn(1, 3 * 32, hw)
        strided = qkv.reshape(1, 3, 4, 8, hw).permute(1, 0, 2, 4, 3)
        contiguous = strided.contiguous()
        with torch.no_grad():
            a = F.scaled_dot_product_attention(strided[0], strided[1], strided[2])
            b = F.scaled_dot_product_attention(contiguous[0], contiguous[1], contiguous[2])
            ts = best_time(lambda: F.scaled_dot_product_attention(strided[0], strided[1], strided[2]), repeats)
            tc = best_time(lambda: F.scaled_dot_product_attention(contiguous[0], contiguous[1], contiguous[2]), repeats)
        rows.append({"tokens": f"{side}x{side}", "strided_ms": ts * 1e3, "contiguous_ms": tc * 1e3,
                     "speedup": ts / tc, "max_abs_diff": float((a - b).abs().max())})
    return rows


def macs(net, size):
    total = [0]

    def hook(m, i, o):
        total[0] += o.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 1, size, size), torch.zeros(1, 1, size, size), torch.zeros(1))
    for h in hs:
        h.remove()
    return total[0]


def network_part(repeats, size=192, batch=8):
    nets = {}
    for name, kw in CANDIDATES.items():
        kw = dict(kw)
        kw.pop("image_size", None)
        nets[name] = ConditionalUNet(UNetConfig(in_channels=2, image_size=64, **kw)).eval()
    x, c, t = torch.randn(batch, 1, size, size), torch.randn(batch, 1, size, size), torch.rand(batch) * 1000
    best = {n: float("inf") for n in nets}
    with torch.no_grad():
        for net in nets.values():
            net(x, c, t)
        for _ in range(repeats):
            for n, net in nets.items():
                t0 = time.perf_counter()
                net(x, c, t)
                best[n] = min(best[n], time.perf_counter() - t0)
    return [{"network": n, "params_m": count_parameters(net) / 1e6, "gmac_per_image": macs(net, size) / 1e9,
             "ms_per_image": best[n] / batch * 1e3, "attention_tokens": _tokens(net.config, size)}
            for n, net in nets.items()]


def _tokens(cfg, size):
    side = size // (cfg.space_to_depth * 2 ** (len(cfg.channel_mults) - 1))
    levels = sorted(set(cfg.attention_levels))
    sides = [size // (cfg.space_to_depth * 2 ** a) for a in levels] + [side]
    return f"{max(sides)}x{max(sides)}"


def conv_part(repeats):
    rows = []
    with torch.no_grad():
        for ch, side in ((16, 192), (24, 192), (32, 96), (64, 48), (128, 24)):
            conv = torch.nn.Conv2d(ch, ch, 3, padding=1)
            x = torch.randn(8, ch, side, side)
            t = best_time(lambda: conv(x), repeats)
            rows.append({"channels": ch, "size": side, "ms": t * 1e3,
                         "gmac_per_s": 8 * ch * ch * 9 * side * side / t / 1e9})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "unet_cpu.json"))
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    doc = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
                      f"{torch.__version__}, "
                      f"{torch.get_num_threads()} thread(s)", "load_average_start": load0,
           "attention": attention_part(args.repeats), "networks": network_part(args.repeats),
           "convolutions": conv_part(args.repeats), "load_average_end": os.getloadavg()[0]}
    for r in doc["attention"]:
        print(f"attention {r['tokens']}: strided {r['strided_ms']:.1f} ms, contiguous {r['contiguous_ms']:.1f} ms "
              f"({r['speedup']:.1f}x), max diff {r['max_abs_diff']:.1e}")
    for r in doc["networks"]:
        print(f"{r['network']:36s} {r['params_m']:5.2f} M {r['gmac_per_image']:5.2f} GMAC {r['ms_per_image']:7.1f} "
              "ms/192^2 "
              f"attention <= {r['attention_tokens']}")
    for r in doc["convolutions"]:
        print(f"conv {r['channels']:3d} ch at {r['size']}^2: {r['gmac_per_s']:.1f} GMAC/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out} (load average {load0:.1f} -> {doc['load_average_end']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
