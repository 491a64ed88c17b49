"""Whole DDIM inversion with the tiny seeded SD1.5-architecture model on a real shared clip.

STEM (K = 256, R = 3, warm start, the node defaults) against per-frame DDIM inversion (the plain
model), 2-frame (FateZero) and all-frame extended attention, through the pack's own nodes inside an
in-process ComfyUI (STEMBasisEstimate + STEMInvert). Every context uses torch's fused
scaled_dot_product_attention (ComfyUI's --use-pytorch-cross-attention, the default on NVIDIA GPUs), so
the comparison is of the attention context only.

Every context runs twice (the second round in reverse order) and the faster run counts. Besides wall
time the process CPU time (user + system, all threads) is reported: on a shared, overloaded machine it
is far steadier than wall time, because time the process waits for a core is not counted. Time is
reported per inversion step (the mean over the steps run) and as the extrapolated 50-step
total; all-frame attention runs fewer steps when it would blow the time budget (it has no state between
steps, so its per-step time does not depend on the step count). Peak memory: see ``bench/__init__``.

Run alone: ``python -m bench.bench_inversion [--quick] [--device cpu|cuda] [--dtype fp32|fp16|bf16]``.
"""
from __future__ import annotations

import time
from importlib import import_module

import torch

from . import (DEFAULT_OUT, SHARED_VIDEOS, PeakMemory, bench_args, boot_host, fmt_bytes, fmt_s, machine_info,
               markdown_table, sync, write_json)

PAPER_STEPS = 50


def load_clip(name: str, frames: int, width: int, height: int) -> torch.Tensor:
    from importlib import import_module
    clip = import_module("comfyui_stem.stem_core.video_io").load_video(SHARED_VIDEOS / name, custom_width=width, custom_height=height,
                               frame_load_cap=frames, load_audio_track=False)
    return clip.frames


def run(quick: bool, device: torch.device, dtype: torch.dtype, out_dir=DEFAULT_OUT, contexts=None,
        rounds: int = 2) -> dict:
    host = boot_host(device, dtype)
    comfy_nodes, mapping = host["nodes"], host["mappings"]
    tiny = import_module(f"{host['pack'].__name__}.nodes.testing")
    vae = import_module("comfyui_stem.stem_core.tiny_vae").PoolingVAE()

    # Paper Table 1: 48 frames at 640x360 (latent 80x45), 50 steps. 640x352 keeps the latent a multiple
    # of 8 (80x44: 3520 tokens per frame at the top attention level, 880 / 220 / 66 below).
    if quick:
        frames, width, height, steps, all_frame_steps = 8, 320, 176, 3, 1
    else:
        frames, width, height, steps, all_frame_steps = 16, 640, 352, 6, 1
    clip_name = "wolf.mp4"
    images = load_clip(clip_name, frames, width, height)
    frames = images.shape[0]
    model = tiny.build_tiny_model(0, 32)
    clip = tiny.build_tiny_clip(0)
    latent = comfy_nodes.VAEEncode().encode(vae, images)[0]
    cond = comfy_nodes.CLIPTextEncode().encode(clip, "a wolf")[0]
    invert = mapping["STEMInvert"]()
    estimate = mapping["STEMBasisEstimate"]()

    def patched(ctx, k=256, r=3, warm=True):
        return estimate.patch(model, ctx, k, r, 0.05, 0, "paper", "all", warm, "tokens", 0)[0]

    configs = [
        ("per_frame", "per-frame (plain model)", lambda: model, steps),
        ("stem", "STEM K=256 R=3 warm", lambda: patched("stem"), steps),
        ("stem_cold", "STEM K=256 R=3 cold (paper)", lambda: patched("stem", warm=False), steps),
        ("stem_r1", "STEM K=256 R=1 warm", lambda: patched("stem", r=1), steps),
        ("stem_k128", "STEM K=128 R=3 warm", lambda: patched("stem", k=128), steps),
        ("two_frame", "2-frame (FateZero)", lambda: patched("two_frame"), steps),
        ("all_frame", "all-frame extended", lambda: patched("all_frame"), all_frame_steps),
    ]
    if contexts:
        configs = [c for c in configs if c[0] in contexts]

    # warm-up: one step of the plain model (first sampling call loads the model, builds kernels)
    with torch.no_grad():
        invert.invert(model, latent, cond, 1)

    # Two rounds, the second in reverse order, and the faster of the two runs is kept: on a shared
    # machine a load change then cannot favour the contexts that happened to run first.
    results = {key: [] for key, *_ in configs}
    order = list(configs)
    for rnd in range(rounds):
        for key, label, make, n_steps in (order if rnd % 2 == 0 else order[::-1]):
            m = make()
            with torch.no_grad(), PeakMemory(device) as mem:
                start, cpu_start = time.perf_counter(), time.process_time()
                invert.invert(m, latent, cond, n_steps)
                sync(device)
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            results[key].append((elapsed, mem.peak_bytes, mem.kind, cpu))
            print(f"  inversion round {rnd + 1} {label:30s} {n_steps} steps {fmt_s(elapsed):>9s}  "
                  f"{fmt_s(elapsed / n_steps)}/step  cpu {fmt_s(cpu / n_steps)}/step  peak {fmt_bytes(mem.peak_bytes)}",
                  flush=True)
    rows = []
    for key, label, make, n_steps in configs:
        runs = results[key]
        elapsed = min(r[0] for r in runs)
        peaks = [r[1] for r in runs if r[1] is not None]
        per_step = elapsed / n_steps
        cpu_per_step = min(r[3] for r in runs) / n_steps
        rows.append({"key": key, "label": label, "steps": n_steps, "total_s": elapsed, "per_step_s": per_step,
                     "cpu_per_step_s": cpu_per_step, "runs_s": [r[0] for r in runs],
                     "runs_cpu_s": [r[3] for r in runs], "paper_50_steps_s": per_step * PAPER_STEPS,
                     "peak_bytes": max(peaks) if peaks else None, "mem_kind": runs[0][2]})

    base = next((r for r in rows if r["key"] == "per_frame"), None)
    for r in rows:
        r["ratio_to_per_frame"] = r["per_step_s"] / base["per_step_s"] if base else None
        r["cpu_ratio_to_per_frame"] = r["cpu_per_step_s"] / base["cpu_per_step_s"] if base else None

    payload = {"machine": machine_info(device, dtype),
               "setup": {"clip": clip_name, "frames": frames, "width": width, "height": height,
                         "latent": [int(s) for s in latent["samples"].shape], "model": "tiny SD1.5 (32 channels)",
                         "steps": steps, "all_frame_steps": all_frame_steps, "quick": quick,
                         "rounds": rounds, "time": "fastest of the rounds (alternating order)",
                         "attention": "torch scaled_dot_product_attention for every context"},
               "rows": rows}
    write_json(out_dir / "inversion.json", payload)
    table = markdown_table(
        ["context", "steps run", "wall/step", f"{PAPER_STEPS}-step est.", "x per-frame (wall)", "CPU time/step",
         "x per-frame (CPU time)", "peak mem"],
        [[r["label"], r["steps"], fmt_s(r["per_step_s"]), fmt_s(r["paper_50_steps_s"]),
          f"{r['ratio_to_per_frame']:.2f}" if r["ratio_to_per_frame"] else "n/a", fmt_s(r["cpu_per_step_s"]),
          f"{r['cpu_ratio_to_per_frame']:.2f}" if r["cpu_ratio_to_per_frame"] else "n/a", fmt_bytes(r["peak_bytes"])]
         for r in rows])
    header = (f"Whole inversion, tiny model, {clip_name} {frames} frames {width}x{height} "
              f"(latent {tuple(latent['samples'].shape[2:])}), {payload['machine']['device']} "
              f"{payload['machine']['dtype']}; memory: {rows[0]['mem_kind'] if rows else 'n/a'}")
    (out_dir / "inversion.md").write_text(header + "\n\n" + table + "\n")
    print(header)
    print(table, flush=True)
    return payload


def main(argv=None):
    def extra(parser):
        parser.add_argument("--contexts", default="", help="comma-separated subset of context keys")

    a, device, dtype, out = bench_args(__doc__, argv, extra)
    run(a.quick, device, dtype, out, [c for c in a.contexts.split(",") if c] or None)


if __name__ == "__main__":
    main()
