"""End-to-end reenactment speed with its breakdown (issue 15), and on CUDA the denoiser's MFU for sDiT-XL/2.

Runs the stages of `AnchorFacePipeline.reenact` one after the other on a driving clip (cut to `--frames` frames
first, untimed) and times each: landmarks (source crop + landmarks, the driving clip's crop boxes and MediaPipe
landmarks, relative motion), G (the global encoder), denoising (Anchored Diffusion), decoding (latents -> uint8
crops) and writing (the driving clip decoded again, crops encoded to H.264). Prints frames/s end to end.

On CUDA it also reports whether SDPA's flash backend takes the sDiT's attention, the `torch.compile` warm-up (with
--compile), and the model-FLOPs utilisation of the denoiser for sDiT-XL/2, T = 8, 256^2 (32^2 x 4 SD latents,
random weights, bf16) over a long video at 20 and 50 steps: MFU = 2 * flops_per_frame * frames run / time / peak.

    PYTHONPATH=src python benchmarks/bench_reenact.py --frames 78 --steps 25 --threads 2      # CPU, demo model
    PYTHONPATH=src python benchmarks/bench_reenact.py --device cuda --bf16 --compile --mfu     # GPU
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"  # ../shared beside the checkout
H100_BF16_DENSE_TFLOPS = 989.0


def parse_args(argv=None):
    from anchorface.apps.arguments import non_negative_int, positive_float, positive_int
    from anchorface.apps.cli import Parser
    from anchorface.methods.anchored.options import MERGES, SAMPLERS

    p = Parser(prog="bench_reenact", description=__doc__.split("\n\n")[0],
               help_command="python benchmarks/bench_reenact.py --help")
    p.add_argument("--checkpoint", default=str(files("anchorface") / "assets" / "demo"))
    p.add_argument("--source", default=str(FACES / "source" / "s1.jpg"))
    p.add_argument("--driving", default=str(FACES / "driving" / "d0.mp4"))
    p.add_argument("--frames", type=non_negative_int, default=78,
                   help="cut the driving clip to this many frames (0 = all)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument("--steps", type=positive_int, default=25)
    p.add_argument("--merge", choices=MERGES, default="anchored")
    p.add_argument("--micro-batch", type=positive_int, default=None)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 weights for the sDiT and G (from_pretrained dtype)")
    p.add_argument("--compile", action="store_true", help="torch.compile the sDiT blocks (warm-up reported)")
    p.add_argument("--mfu", action="store_true", help="the model stages at the paper's scale, random weights "
                   "(sDiT-XL/2, T=8, 256^2, SD-VAE-shaped codec): G, denoising with its MFU, decoding")
    p.add_argument("--skip-reenact", action="store_true", help="only --mfu (no demo-model run: needs no MediaPipe)")
    p.add_argument("--mfu-preset", default="XL/2")
    p.add_argument("--mfu-video-frames", type=positive_int, default=400, help="frames of the long video for --mfu")
    p.add_argument("--mfu-steps", type=positive_int, nargs="+", default=[20, 50])
    p.add_argument("--peak-tflops", type=positive_float, default=H100_BF16_DENSE_TFLOPS)
    p.add_argument("--json", default=None, help="also write the figures as JSON")
    args = p.parse_args(argv)
    if args.skip_reenact and not args.mfu:
        p.error("--skip-reenact leaves nothing to measure without --mfu")
    return args


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def stage(times: dict, name: str, device, cpu: dict | None = None):
    """Wall-clock seconds of the stage into `times`, and the process CPU seconds into `cpu` (all threads: on a
    shared machine the steadier figure, with one thread the closest to the stage's own cost)."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    yield
    sync(device)
    times[name] = times.get(name, 0.0) + time.perf_counter() - t0
    if cpu is not None:
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - c0


def cut_clip(src: str, n: int, folder: str) -> str:
    """The first n frames of `src` as a new clip (same frame rate, no audio): untimed preparation."""
    from anchorface.io.video import VideoWriter, iter_frames, probe_video

    out = os.path.join(folder, f"driving-{n}.mp4")
    with VideoWriter(out, probe_video(src).fps) as w:
        for frame in iter_frames(src, max_frames=n):
            w.write(frame)
    return out


def reenact_breakdown(args) -> dict:
    from anchorface.faces import detect as faces, landmarks
    from anchorface.io.images import load_image
    from anchorface.io.video import VideoWriter, iter_frames, probe_video
    from anchorface.methods.anchored.pipeline import AnchorFacePipeline

    device = args.device
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    pipe = AnchorFacePipeline.from_pretrained(args.checkpoint, device=device, dtype=dtype)
    info = {}
    if args.compile:
        from anchorface.methods.anchored.sdit import compile_blocks

        compile_blocks(pipe.sdit)
    if str(device).startswith("cuda"):
        from anchorface.methods.anchored.sdit import flash_attention_in_use

        info["flash_attention"] = flash_attention_in_use(pipe.sdit)
    with tempfile.TemporaryDirectory() as tmp:
        driving = cut_clip(args.driving, args.frames, tmp) if args.frames else args.driving
        n_frames = probe_video(driving).num_frames
        if args.compile:  # the warm-up: the first forward passes compile the blocks
            t0 = time.perf_counter()
            pipe.generate(pipe.global_signal(np.zeros((pipe.resolution,) * 2 + (3,), np.uint8)),
                          np.zeros((pipe.num_frames * 2, landmarks.NUM_LANDMARKS, 3), np.float32), steps=2,
                          sampler=args.sampler, merge=args.merge, progress=False)
            sync(device)
            info["compile_warmup_s"] = time.perf_counter() - t0
        times: dict[str, float] = {}
        cpu: dict[str, float] = {}
        start = time.perf_counter()
        with stage(times, "landmarks", device, cpu):
            image = load_image(args.source)
            box = faces.source_crop_box(image, "the source image")
            src_crop = faces.crop(image, box, pipe.resolution)
            src_lmk = faces.source_landmarks(image, box, pipe.resolution)
            track = faces.track_video(driving, pipe.resolution, progress=False)
            motion = landmarks.relative_motion(track.landmarks, src_lmk, reference=0)
        with stage(times, "G", device, cpu):
            g = pipe.global_signal(src_crop)
        with stage(times, "denoising", device, cpu):
            latents = pipe.generate(g, motion, merge=args.merge, sampler=args.sampler, steps=args.steps,
                                    micro_batch=args.micro_batch, progress=False)
        with stage(times, "decoding", device, cpu):
            crops = list(pipe.decode_frames(latents))
        with stage(times, "writing", device, cpu):
            with VideoWriter(os.path.join(tmp, "out.mp4"), probe_video(driving).fps) as w:
                for _frame, crop in zip(iter_frames(driving), crops):
                    w.write(crop)
        total = time.perf_counter() - start
    return dict(frames=n_frames, total_s=total, frames_per_s=n_frames / total, stages_s=times, stages_cpu_s=cpu,
                **info)


SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=256,
              block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4)  # Stable Diffusion's VAE architecture (f = 8, C = 4)


def paper_scale(args) -> dict:
    """The model stages of reenact at the paper's scale, random weights: sDiT-`--mfu-preset`, T = 8, on 32x32x4
    latents (256^2 through an SD-VAE-shaped AutoencoderKL, built, saved and loaded through `frozen.codecs` like a
    real one), a learned G, over a `--mfu-video-frames` video. Per step count: G, denoising (with its MFU) and
    decoding (uint8 through pinned memory) seconds, and the frames/s of the three together. Also the host
    synchronisations one sampling step makes (torch.cuda sync debug mode), against its forward passes x blocks."""
    from diffusers import AutoencoderKL

    from anchorface.config import DataConfig, DiffusionConfig
    from anchorface.diffusion.gaussian import GaussianDiffusion
    from anchorface.frozen.codecs import decode_to_uint8, load_codec
    from anchorface.methods.anchored.global_encoder import LearnedGlobalEncoder
    from anchorface.methods.anchored.plans import anchored_plan
    from anchorface.methods.anchored.sampler import anchored_diffusion
    from anchorface.config import MODEL_PRESETS
    from anchorface.methods.anchored.sdit import SDiT, SDiTConfig, compile_blocks, flops_per_frame

    T, device, res = 8, args.device, 256
    cuda = str(device).startswith("cuda")
    dtype = torch.bfloat16 if cuda or args.bf16 else torch.float32
    cfg = SDiTConfig(input_size=32, in_channels=4, num_frames=T, global_dim=768, **MODEL_PRESETS[args.mfu_preset])
    with torch.device(device):
        model = SDiT(cfg).to(dtype).eval()
        encoder = LearnedGlobalEncoder(768, res).eval()  # G once per video: float32
    with tempfile.TemporaryDirectory() as tmp:
        AutoencoderKL(**SD_VAE).save_pretrained(tmp)
        codec = load_codec(DataConfig(resolution=res, codec="sd-vae", codec_path=tmp), dtype=dtype).to(device)
    out = dict(preset=args.mfu_preset, T=T, resolution=res, video_frames=args.mfu_video_frames, dtype=str(dtype),
               parameters=sum(p.numel() for p in model.parameters()))
    if cuda:
        from anchorface.methods.anchored.sdit import flash_attention_in_use

        out["flash_attention"] = flash_attention_in_use(model, frames=T, batch=2)
    if args.compile:
        compile_blocks(model)
    diffusion = GaussianDiffusion(DiffusionConfig())
    n = args.mfu_video_frames
    plan = anchored_plan(n, T)
    lmk = np.random.default_rng(0).normal(size=(n, cfg.landmark_dim)).astype(np.float32) * 0.1
    run = dict(sampler=args.sampler, micro_batch=args.micro_batch or 16, latent_shape=(4, 32, 32), progress=False)
    source = torch.rand(1, 3, res, res, device=device) * 2 - 1
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        g = encoder(source)
    latents = anchored_diffusion(model, diffusion, plan, g, lmk, steps=2, **run)  # warm-up (and compilation)
    for _ in decode_to_uint8(codec, latents[:16].to(device)):
        pass
    sync(device)
    out["warmup_s"] = time.perf_counter() - t0
    if cuda:  # host synchronisations in one sampling step, with the anchoring hook (1 step = 1 pass per sequence)
        from sync_sites import sync_sites  # benchmarks/sync_sites.py (this script's folder is on sys.path)

        sites = sync_sites(lambda: anchored_diffusion(model, diffusion, plan, g, lmk, steps=1, **run))
        forwards = -(-plan.num_sequences // run["micro_batch"])
        out["host_syncs_one_step"] = sum(sites.values())
        out["host_sync_sites"] = dict(sites.most_common(10))
        out["forwards_one_step"], out["blocks"] = forwards, cfg.depth
    rows = []
    for steps in args.mfu_steps:
        times: dict[str, float] = {}
        with stage(times, "G", device), torch.no_grad():
            g = encoder(source)
        with stage(times, "denoising", device):
            latents = anchored_diffusion(model, diffusion, plan, g, lmk, steps=steps, **run)
        with stage(times, "decoding", device):
            for _ in decode_to_uint8(codec, latents.to(device), batch_size=16):
                pass
        frames_run = plan.num_sequences * T * steps  # frames through the sDiT (the anchor counted in every sequence)
        flops = 2 * flops_per_frame(cfg, T) * frames_run
        sec = times["denoising"]
        rows.append(dict(steps=steps, sampler=args.sampler, stages_s=times, denoising_tflops_s=flops / sec / 1e12,
                         mfu_pct=100 * flops / sec / (args.peak_tflops * 1e12),
                         model_frames_per_s=n / sum(times.values()), denoising_frames_per_s=n / sec))
    out["rows"] = rows
    # the same forward passes bare (no gather, merge, scheduler, noise or anchoring hook; C given), first step count
    steps, mb = args.mfu_steps[0], min(run["micro_batch"], plan.num_sequences)
    x = torch.randn(mb, T, 4, 32, 32, device=device, dtype=dtype)
    with torch.no_grad():
        cond = model.condition(g.reshape(1, -1).expand(mb, -1), torch.as_tensor(lmk[plan.slots[:mb]])
                               .to(device, dtype))
        t_batch = torch.full((mb,), 500, device=device)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            for start in range(0, plan.num_sequences, mb):
                b = min(mb, plan.num_sequences - start)
                model(x[:b], t_batch[:b], cond=cond[:b])
        sync(device)
    out["bare_forwards_s"] = time.perf_counter() - t0
    out["sampler_over_bare"] = rows[0]["stages_s"]["denoising"] / out["bare_forwards_s"]
    return out


def main(argv=None) -> int:
    from anchorface.apps.arguments import writable_folder
    from anchorface.io.atomic import write_text

    args = parse_args(argv)
    if args.json:  # (before the run, not after it)
        writable_folder(Path(args.json).resolve().parent, "the folder of --json")
    torch.set_num_threads(args.threads)
    out = dict(device=args.device, threads=args.threads, steps=args.steps, sampler=args.sampler, merge=args.merge,
               bf16=args.bf16, compile=args.compile, load=os.getloadavg()[0])
    if not args.skip_reenact:
        out.update(reenact_breakdown(args))
        print_breakdown(args, out)
    if args.mfu:  # meant for CUDA; on CPU only as a check of the code path with a small preset
        out["paper_scale"] = paper_scale(args)
        print_paper_scale(args, out["paper_scale"])
    if args.json:
        write_text(args.json, json.dumps(out, indent=2, allow_nan=False))
    return 0


def print_breakdown(args, out) -> None:
    s = out["stages_s"]
    print(f"{out['frames']} frames, {args.sampler} {args.steps} steps, {args.merge}, {args.device}, "
          f"{args.threads} thread(s), load {out['load']:.2f}: {out['total_s']:.2f} s = {out['frames_per_s']:.2f} "
          f"frames/s end to end")
    cpu_total = sum(out["stages_cpu_s"].values())
    for name, sec in s.items():
        c = out["stages_cpu_s"][name]
        print(f"  {name:>10}: {sec:7.2f} s  {100 * sec / out['total_s']:5.1f} %   CPU {c:7.2f} s  "
              f"{100 * c / cpu_total:5.1f} %")
    for key in ("flash_attention", "compile_warmup_s"):
        if key in out:
            print(f"  {key}: {out[key]}")


def print_paper_scale(args, p: dict) -> None:
    print(f"paper scale, random weights: sDiT-{p['preset']} ({p['parameters'] / 1e6:.0f}M), T={p['T']}, "
          f"{p['resolution']}^2 (SD-VAE-shaped codec), {p['video_frames']} frames, {p['dtype']}, compile "
          f"{args.compile}; warm-up {p['warmup_s']:.1f} s"
          + (f"; flash attention: {p['flash_attention']}" if "flash_attention" in p else ""))
    if "host_syncs_one_step" in p:
        print(f"  host synchronisations in one sampling step: {p['host_syncs_one_step']} ({p['forwards_one_step']} "
              f"forward passes x {p['blocks']} blocks)")
    for r in p["rows"]:
        st = r["stages_s"]
        print(f"  {r['sampler']} {r['steps']} steps: G {st['G']:.3f} s, denoising {st['denoising']:.2f} s "
              f"({r['denoising_frames_per_s']:.1f} frames/s, {r['denoising_tflops_s']:.3g} TFLOP/s, MFU "
              f"{r['mfu_pct']:.3g} % of {args.peak_tflops:g}), decoding {st['decoding']:.2f} s; model stages "
              f"{r['model_frames_per_s']:.1f} frames/s", flush=True)
    print(f"  the same forward passes bare ({p['rows'][0]['steps']} steps): {p['bare_forwards_s']:.2f} s; sampler / "
          f"bare forwards = {p['sampler_over_bare']:.3f}")


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "bench_reenact"))
