"""sDiT cost and forward throughput per preset and sequence length T (§3.1, App. D).

Prints, per (preset, T): parameters, GFLOPs per frame per denoising step (analytic, DiT's convention: one FLOP per
multiply-accumulate, as DiT's published 118.6 GFLOPs for XL/2), and the measured forward throughput in fp32
(frames/s, tokens/s). On CUDA it also measures bf16 autocast and the model FLOPs utilisation
MFU = 2 * MACs / time / peak (peak defaults to 989 TFLOP/s, H100/H200 SXM bf16 dense).

    python benchmarks/bench_model.py --quick
    python benchmarks/bench_model.py --presets S/2 XL/2 --frames 4 8 --iters 2 --csv bench.csv
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time

import torch

from anchorface.config import MODEL_PRESETS as PRESETS
from anchorface.methods.anchored.sdit import SDiT, SDiTConfig, flops_per_frame

H100_BF16_DENSE_TFLOPS = 989.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["S/2", "XL/2"], choices=list(PRESETS), metavar="PRESET",
                   help="DiT presets S|B|L|XL / 2|4|8 (default: S/2 XL/2)")
    p.add_argument("--frames", nargs="+", type=int, default=[4, 8], help="sequence lengths T (default: 4 8)")
    p.add_argument("--input-size", type=int, default=32, help="latent height = width (default 32: 256 px, SD VAE)")
    p.add_argument("--channels", type=int, default=4, help="latent channels (default 4)")
    p.add_argument("--global-dim", type=int, default=768, help="G dimension; 0 = unconditional DiT (default 768)")
    p.add_argument("--landmark-dim", type=int, default=478 * 3, help="L_t dimension (default 1434)")
    p.add_argument("--batch", type=int, default=1, help="sequences per forward pass (default 1)")
    p.add_argument("--iters", type=int, default=2, help="timed forward passes (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forward passes first (default 1)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast (always on CUDA)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"peak TFLOP/s for MFU (default on CUDA: {H100_BF16_DENSE_TFLOPS}, H100/H200 SXM bf16)")
    p.add_argument("--quick", action="store_true", help="S/2, T=4, 16x16 latents, 1 timed pass (< 60 s on 2 cores)")
    p.add_argument("--csv", default=None, metavar="PATH", help="also write the table as CSV")
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.frames, args.input_size, args.iters, args.warmup = ["S/2"], [4], 16, 1, 1
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda"):
        args.bf16 = True
        args.peak_tflops = args.peak_tflops or H100_BF16_DENSE_TFLOPS
    return args


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_forward(model, cfg, frames, batch, iters, warmup, device, bf16) -> float:
    """Seconds per forward pass of `batch` sequences of `frames` frames."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen).to(device)
    t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    cond = {}
    if cfg.global_dim > 0:
        cond = dict(g=torch.randn(batch, cfg.global_dim, generator=gen).to(device),
                    lmk=torch.randn(batch, frames, cfg.landmark_dim, generator=gen).to(device))
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    with autocast:
        for _ in range(warmup):
            model(x, t, **cond)
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            model(x, t, **cond)
        sync(device)
    return (time.perf_counter() - start) / iters


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    for preset in args.presets:
        cfg = SDiTConfig(input_size=args.input_size, in_channels=args.channels, global_dim=args.global_dim,
                         landmark_dim=args.landmark_dim, **PRESETS[preset])
        torch.manual_seed(0)
        with torch.device(args.device):
            model = SDiT(cfg).eval()
        params = sum(p.numel() for p in model.parameters())
        for T in args.frames:
            macs = flops_per_frame(cfg, T)
            frames = args.batch * T
            tokens = frames * cfg.num_patches
            row = dict(preset=preset, T=T, latent=f"{args.input_size}x{args.input_size}x{args.channels}",
                       params_M=params / 1e6, gflops_per_frame=macs / 1e9, device=args.device, batch=args.batch)
            for name, bf16 in [("fp32", False)] + ([("bf16", True)] if args.bf16 else []):
                sec = time_forward(model, cfg, T, args.batch, args.iters, args.warmup, args.device, bf16)
                row[f"{name}_frames_s"] = frames / sec
                row[f"{name}_tokens_s"] = tokens / sec
                if args.peak_tflops:
                    row[f"{name}_mfu_pct"] = 100 * 2 * macs * frames / sec / (args.peak_tflops * 1e12)
            rows.append(row)
            print_row(row, header=len(rows) == 1)
        del model
    if args.csv:
        tmp = f"{args.csv}.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, args.csv)
    return 0


COLUMNS = [("preset", "{}"), ("T", "{}"), ("latent", "{}"), ("params_M", "{:.1f}"), ("gflops_per_frame", "{:.2f}"),
           ("fp32_frames_s", "{:.3g}"), ("fp32_tokens_s", "{:.4g}"), ("fp32_mfu_pct", "{:.1f}"),
           ("bf16_frames_s", "{:.3g}"), ("bf16_tokens_s", "{:.4g}"), ("bf16_mfu_pct", "{:.1f}")]
HEADERS = {"params_M": "params (M)", "gflops_per_frame": "GFLOPs/frame/step", "fp32_frames_s": "fp32 frames/s",
           "fp32_tokens_s": "fp32 tokens/s", "fp32_mfu_pct": "fp32 MFU %", "bf16_frames_s": "bf16 frames/s",
           "bf16_tokens_s": "bf16 tokens/s", "bf16_mfu_pct": "bf16 MFU %"}


def print_row(row, header=False):
    cols = [(k, fmt) for k, fmt in COLUMNS if k in row]
    cells = [fmt.format(row[k]) for k, fmt in cols]
    names = [HEADERS.get(k, k) for k, _ in cols]
    widths = [max(len(n), 9) for n in names]  # fixed widths: rows are printed as they are measured
    if header:
        print(f"device: {row['device']}, batch {row['batch']} sequence(s); GFLOPs counted as DiT (multiply-adds)")
        print("| " + " | ".join(n.ljust(w) for n, w in zip(names, widths)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |", flush=True)


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "bench_model"))
