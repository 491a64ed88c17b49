"""Whole DDIM inversion with the tiny seeded SD1.5-architecture model on a real shared clip.

STEM (K = 256, R = 3, warm start, the node defaults) against per-frame DDIM inversion (the plain
model), 2-frame (FateZero) and all-frame extended attention, through the pack's own nodes inside an
in-process ComfyUI (STEMBasisEstimate + STEMInvert). Every context uses torch's fused
scaled_dot_product_attention (ComfyUI's --use-pytorch-cross-attention, the default on NVIDIA GPUs), so
the comparison is of the attention context only.

Time is reported per inversion step (the mean over the steps run) and as the extrapolated 50-step
total; all-frame attention runs fewer steps when it would blow the time budget (it has no state between
steps, so its per-step time does not depend on the step count). Peak memory: see ``bench/__init__``.

Run alone: ``python -m bench.bench_inversion [--quick] [--device cpu|cuda] [--dtype fp32|fp16|bf16]``.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from . import (COMFYUI_DIR, DEFAULT_OUT, SHARED_VIDEOS, PeakMemory, fmt_bytes, fmt_s, machine_info,
               markdown_table, resolve_device, resolve_dtype, sync, write_json)

PAPER_STEPS = 50


def boot_host(device: torch.device, dtype: torch.dtype):
    """ComfyUI in-process with the pack loaded; returns (comfy nodes module, pack module)."""
    if not (COMFYUI_DIR / "main.py").exists():
        raise SystemExit(f"no ComfyUI at {COMFYUI_DIR}; run `make setup` or set COMFYUI_DIR")
    sys.path.insert(0, str(COMFYUI_DIR))
    if "nodes" in sys.modules and not hasattr(sys.modules["nodes"], "NODE_CLASS_MAPPINGS"):
        del sys.modules["nodes"]  # this pack's nodes/ package shadowed ComfyUI's nodes.py
    import comfy.cli_args

    args = comfy.cli_args.args
    args.cpu = device.type == "cpu"
    args.use_pytorch_cross_attention = True
    if dtype == torch.float16:
        args.force_fp16 = True
    elif dtype == torch.bfloat16:
        args.bf16_unet = True
    import comfy.model_management  # noqa: F401  (reads args at import)
    import nodes as comfy_nodes

    pack_link = COMFYUI_DIR / "custom_nodes" / "ComfyUI-STEM"
    from . import REPO
    pack_path = pack_link if pack_link.exists() else REPO
    comfy_nodes.load_custom_node(str(pack_path))
    return comfy_nodes, pack_path.name


def load_clip(pack_name: str, name: str, frames: int, width: int, height: int) -> torch.Tensor:
    video_io = sys.modules[f"{pack_name}.stem_core.video_io"]
    clip = video_io.load_video(SHARED_VIDEOS / name, custom_width=width, custom_height=height,
                               frame_load_cap=frames, load_audio_track=False)
    return clip.frames


def run(quick: bool, device: torch.device, dtype: torch.dtype, out_dir=DEFAULT_OUT, contexts=None) -> dict:
    comfy_nodes, pack = boot_host(device, dtype)
    tiny = sys.modules[f"{pack}.nodes.tiny_model"]
    vae = sys.modules[f"{pack}.stem_core.tiny_vae"].PoolingVAE()
    mapping = comfy_nodes.NODE_CLASS_MAPPINGS

    # Paper Table 1: 48 frames at 640x360 (latent 80x45), 50 steps. 640x352 keeps the latent a multiple
    # of 8 (80x44: 3520 tokens per frame at the top attention level, 880 / 220 / 66 below).
    if quick:
        frames, width, height, steps, all_frame_steps = 8, 320, 176, 3, 1
    else:
        frames, width, height, steps, all_frame_steps = 16, 640, 352, 6, 1
    clip_name = "wolf.mp4"
    images = load_clip(pack, clip_name, frames, width, height)
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

    rows = []
    for key, label, make, n_steps in configs:
        m = make()
        with torch.no_grad(), PeakMemory(device) as mem:
            start = time.perf_counter()
            invert.invert(m, latent, cond, n_steps)
            sync(device)
            elapsed = time.perf_counter() - start
        per_step = elapsed / n_steps
        rows.append({"key": key, "label": label, "steps": n_steps, "total_s": elapsed, "per_step_s": per_step,
                     "paper_50_steps_s": per_step * PAPER_STEPS, "peak_bytes": mem.peak_bytes,
                     "mem_kind": mem.kind})
        print(f"  inversion {label:30s} {n_steps} steps {fmt_s(elapsed):>9s}  {fmt_s(per_step)}/step  "
              f"peak {fmt_bytes(mem.peak_bytes)}", flush=True)

    base = next((r for r in rows if r["key"] == "per_frame"), None)
    for r in rows:
        r["ratio_to_per_frame"] = r["per_step_s"] / base["per_step_s"] if base else None

    payload = {"machine": machine_info(device, dtype),
               "setup": {"clip": clip_name, "frames": frames, "width": width, "height": height,
                         "latent": [int(s) for s in latent["samples"].shape], "model": "tiny SD1.5 (32 channels)",
                         "steps": steps, "all_frame_steps": all_frame_steps, "quick": quick,
                         "attention": "torch scaled_dot_product_attention for every context"},
               "rows": rows}
    write_json(out_dir / "inversion.json", payload)
    table = markdown_table(
        ["context", "steps run", "time/step", f"{PAPER_STEPS}-step est.", "x per-frame", "peak mem"],
        [[r["label"], r["steps"], fmt_s(r["per_step_s"]), fmt_s(r["paper_50_steps_s"]),
          f"{r['ratio_to_per_frame']:.2f}" if r["ratio_to_per_frame"] else "n/a", fmt_bytes(r["peak_bytes"])]
         for r in rows])
    header = (f"Whole inversion, tiny model, {clip_name} {frames} frames {width}x{height} "
              f"(latent {tuple(latent['samples'].shape[2:])}), {payload['machine']['device']} "
              f"{payload['machine']['dtype']}; memory: {rows[0]['mem_kind'] if rows else 'n/a'}")
    (out_dir / "inversion.md").write_text(header + "\n\n" + table + "\n")
    print(header)
    print(table, flush=True)
    return payload


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--contexts", default="", help="comma-separated subset of context keys")
    a = parser.parse_args(argv)
    from pathlib import Path
    device = resolve_device(a.device)
    dtype = resolve_dtype(a.dtype, device)
    contexts = [c for c in a.contexts.split(",") if c] or None
    run(a.quick, device, dtype, Path(a.out), contexts)


if __name__ == "__main__":
    main()
