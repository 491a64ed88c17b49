"""Reconstruction error of STEM Invert + STEM Reconstruct with and without noise extrapolation, per step count.

Issue 13, "What to build" 3: Videoshop's noise extrapolation (``STEMInvert`` input ``extrapolate``: above sigma 1
the model sees z + (x - z) * s_next / s) against plain DDIM inversion, on the tiny seeded SD1.5-architecture model
and the pack's synthetic clip (scripts/demo_clip.py), through the nodes inside an in-process ComfyUI, for the plain
model (per-frame DDIM) and STEM attention (K = 64, R = 3, replayed bases). Both runs call the model at the same
sigmas and equally often; only the model input above sigma 1 differs. Error: mean |reconstruction - source| over
mean |source| of the latents, and the same for the VAE-decoded frames (against the decoded source latent, so
the VAE's own loss is not counted).

The tiny model has random weights: its numbers show the plumbing and the size of the effect on one denoiser, not
what a trained SD1.5 checkpoint does.

Run alone: ``python -m bench.bench_extrapolation [--quick] [--device cpu|cuda] [--dtype fp32|fp16|bf16]``.
"""
from __future__ import annotations

import time
from importlib import import_module

import numpy as np
import torch

from . import bench_args, boot_host, fmt_s, machine_info, markdown_table, publish, sync


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean() / b.float().abs().mean())


def run(quick: bool, device: torch.device, dtype: torch.dtype, out_dir) -> dict:
    host = boot_host(device, dtype)
    comfy_nodes, mapping = host["nodes"], host["mappings"]
    tiny = import_module(f"{host['pack'].__name__}.nodes.testing")
    vae = import_module(f"{host['pack'].__name__}.stem_core.tiny_vae").PoolingVAE()
    demo_frames = import_module("demo_clip").demo_frames

    # small on purpose: the error ratios, not the speed, are the result (a 4-frame 64x64 run of both contexts and
    # all step counts is ~1000 tiny-model calls: ~10 min on an idle 2-core CPU)
    frames, size = (2, 64) if quick else (4, 64)
    step_counts = (5, 10) if quick else (5, 10, 20, 50)
    images = torch.from_numpy(demo_frames(frames, size, seed=0).astype(np.float32) / 255.0)
    model = tiny.build_tiny_model(0, 32)
    clip = tiny.build_tiny_clip(0)
    latent = comfy_nodes.VAEEncode().encode(vae, images)[0]
    # pixel error against the decoded SOURCE latent: the (lossy) VAE round trip is not what is measured
    source_pixels = comfy_nodes.VAEDecode().decode(vae, latent)[0]
    cond = comfy_nodes.CLIPTextEncode().encode(clip, "colourful shapes moving over a textured background")[0]
    invert, reconstruct = mapping["STEMInvert"](), mapping["STEMReconstruct"]()
    stem = mapping["STEMBasisEstimate"]().patch(model, "stem", 64, 3, 0.05, 0, "paper", "all", False, "tokens", 0)[0]
    models = (("per_frame", "per-frame DDIM (plain model)", model), ("stem", "STEM K=64 R=3", stem))

    rows = []
    for key, label, m in models:
        for steps in step_counts:
            row = {"context": key, "label": label, "steps": steps}
            for flag in (False, True):
                name = "on" if flag else "off"
                with torch.no_grad():
                    start = time.perf_counter()
                    inv, traj, _ = invert.invert(m, latent, cond, steps, extrapolate=flag)
                    rec = reconstruct.reconstruct(m, traj)[0]["samples"]
                    sync(device)
                    row[f"seconds_{name}"] = time.perf_counter() - start
                    decoded = comfy_nodes.VAEDecode().decode(vae, {"samples": rec})[0]
                row[f"latent_error_{name}"] = relative_error(rec, latent["samples"])
                row[f"pixel_error_{name}"] = relative_error(decoded, source_pixels)
                row[f"x_T_{name}"] = inv["samples"]
            row["x_T_change"] = relative_error(row.pop("x_T_on"), row.pop("x_T_off"))
            rows.append(row)
            print(f"  {label:30s} {steps:4d} steps: latent error off {row['latent_error_off']:.3e} "
                  f"on {row['latent_error_on']:.3e}  (x_T moved {row['x_T_change']:.2e})", flush=True)

    payload = {"machine": machine_info(device, dtype),
               "setup": {"clip": f"scripts/demo_clip.py demo_frames({frames}, {size}, seed=0)", "frames": frames,
                         "size": size, "model": "tiny SD1.5 (32 channels, random weights)", "quick": quick,
                         "steps": list(step_counts), "cfg": 1.0, "error": "mean |rec - src| / mean |src|"},
               "rows": rows}

    def tables(p):
        header = (f"STEM Invert + Reconstruct, noise extrapolation off / on, tiny model, synthetic clip "
                  f"{frames} frames {size}x{size}, {p['machine']['device']} {p['machine']['dtype']}")
        table = markdown_table(
            ["context", "steps", "latent error off", "latent error on", "on / off", "pixel error off",
             "pixel error on", "x_T change", "time off", "time on"],
            [[r["label"], r["steps"], f"{r['latent_error_off']:.3e}", f"{r['latent_error_on']:.3e}",
              f"{r['latent_error_on'] / max(r['latent_error_off'], 1e-30):.2f}", f"{r['pixel_error_off']:.3e}",
              f"{r['pixel_error_on']:.3e}", f"{r['x_T_change']:.2e}", fmt_s(r["seconds_off"]), fmt_s(r["seconds_on"])]
             for r in p["rows"]])
        return header + "\n\n" + table + "\n"

    return publish(out_dir, "extrapolation", payload, tables)


def main(argv=None):
    a, device, dtype, out = bench_args(__doc__, argv)
    run(a.quick, device, dtype, out)


if __name__ == "__main__":
    main()
