"""The anchored sampler against the bare sDiT forward passes it must run (issue 15: "sampling at the price of its
forward passes").

For each plan (anchored, multidiffusion) and micro-batch, times `anchored_diffusion` and, on the same sequences and
steps, the bare forwards `model(x, t, g, lmk)` over the same micro-batches (no gather, merge, scheduler, noise or
anchoring hook). After one warm-up of each, the two are interleaved `--repeats` times (against load drift) and the
best of each is kept; the ratio sampler / bare is printed. Ratio <= 1.05 is the issue's target. Wall-clock time
is the figure; the process CPU time (`time.process_time`, one thread) is printed too, as it is far less disturbed
by other processes on a shared machine.

"bare" recomputes C = Mapping(G, L) in every forward, as the issue's reference script; "bare, C given" passes a
precomputed C (as the sampler now does), the stricter reference: both are printed.

    PYTHONPATH=src python benchmarks/bench_sampler_overhead.py            # demo model, 200 frames, 5 DDIM steps
    PYTHONPATH=src python benchmarks/bench_sampler_overhead.py --frames 60 --repeats 3 --micro-batch 4
"""

from __future__ import annotations

import inspect
import sys
import time
from importlib.resources import files

import numpy as np
import torch

from anchorface.diffusion.gaussian import GaussianDiffusion
from anchorface.frozen.codecs import load_codec, to_pixels
from anchorface.methods.anchored.checkpoint import load_checkpoint
from anchorface.methods.anchored.global_encoder import load_encoder
from anchorface.methods.anchored.plans import anchored_plan, multidiffusion_plan
from anchorface.methods.anchored.sampler import anchored_diffusion, micro_batches

PLANS = {"anchored": anchored_plan, "multidiffusion": multidiffusion_plan}


def parse_args(argv=None):
    from anchorface.apps.arguments import positive_int
    from anchorface.apps.cli import Parser
    from anchorface.methods.anchored.options import SAMPLERS

    p = Parser(prog="bench_sampler_overhead", description=__doc__.split("\n\n")[0],
               help_command="python benchmarks/bench_sampler_overhead.py --help")
    p.add_argument("--checkpoint", default=str(files("anchorface") / "assets" / "demo"))
    p.add_argument("--frames", type=positive_int, default=200, help="driving frames N (default 200)")
    p.add_argument("--steps", type=positive_int, default=5, help="sampling steps (default 5)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument("--micro-batch", type=positive_int, nargs="+", default=[4, 16])
    p.add_argument("--plans", nargs="+", choices=PLANS, default=list(PLANS))
    p.add_argument("--repeats", type=positive_int, default=5, help="interleaved timed pairs, best of (default 5)")
    p.add_argument("--threads", type=positive_int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # the checkpoint's parts without the pipeline (no MediaPipe or PyAV needed, e.g. on a bare GPU machine)
    cfg, m, encoder = load_checkpoint(args.checkpoint)
    encoder = encoder or load_encoder(cfg.data, cfg.model.global_dim)
    diffusion = GaussianDiffusion(cfg.diffusion)
    res, T = cfg.data.resolution, cfg.model.num_frames
    C, h, w = load_codec(cfg.data).latent_shape(res)
    N, steps = args.frames, args.steps
    lmk = np.random.default_rng(0).normal(size=(N, 478 * 3)).astype(np.float32) * 0.1
    with torch.no_grad():
        g = encoder.encode_images(to_pixels(np.zeros((res, res, 3), np.uint8))[None])
    takes_c = "cond" in inspect.signature(m.forward).parameters  # forward(..., cond=C) once C can be precomputed

    def sampler(plan, mb):
        t0, c0 = time.perf_counter(), time.process_time()
        anchored_diffusion(m, diffusion, plan, g, lmk, sampler=args.sampler, steps=steps, micro_batch=mb,
                           latent_shape=(C, h, w), progress=False)
        return time.perf_counter() - t0, time.process_time() - c0

    def bare(plan, mb, given_c=False):
        x, gl, lm = torch.randn(mb, T, C, h, w), g.reshape(1, -1).expand(mb, -1), torch.randn(mb, T, 478 * 3)
        with torch.no_grad():
            cond = m.condition(gl, lm) if given_c else None
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                for rows in micro_batches(plan.num_sequences, mb):
                    b = len(rows)
                    if given_c:
                        m(x[:b], torch.full((b,), 500), cond=cond[:b])
                    else:
                        m(x[:b], torch.full((b,), 500), g=gl[:b], lmk=lm[:b])
        return time.perf_counter() - t0, time.process_time() - c0

    print(f"{args.checkpoint}: N={N}, {steps} {args.sampler} steps, {args.threads} thread(s), best of "
          f"{args.repeats} interleaved after a warm-up")
    for kind in args.plans:
        plan = PLANS[kind](N, T)
        for mb in args.micro_batch:
            refs = [False] + ([True] if takes_c else [])
            sampler(plan, mb), [bare(plan, mb, r) for r in refs]  # warm-up
            runs = [(sampler(plan, mb), *[bare(plan, mb, r) for r in refs]) for _ in range(args.repeats)]
            best = [min(r[i][0] for r in runs) for i in range(len(refs) + 1)]  # wall
            cpu = [min(r[i][1] for r in runs) for i in range(len(refs) + 1)]
            line = (f"{kind:>14} micro-batch {mb:>2} ({plan.num_sequences} sequences): sampler {best[0]:.3f} s, "
                    f"bare {best[1]:.3f} s, sampler / bare forwards = {best[0] / best[1]:.3f} (CPU time "
                    f"{cpu[0] / cpu[1]:.3f})")
            if takes_c:
                line += (f"; bare with C given {best[2]:.3f} s, sampler / that = {best[0] / best[2]:.3f} (CPU time "
                         f"{cpu[0] / cpu[2]:.3f})")
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "bench_sampler_overhead"))
