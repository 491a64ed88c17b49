"""R study: how many EM iterations STEM needs, cold start versus warm start.

Real features: the inputs of two self-attention layers (input_1: top level, and input_7: the 1/4
level) of the tiny seeded SD1.5-architecture model, recorded at every step of a per-frame DDIM inversion
of a real shared clip. For every step t and R in {0, 1, 2, 3, 5, 8}:
- cold: EM from K random tokens of X_t (what the paper does at every step),
- warm: EM from the bases the same chain produced at step t-1 (what the patch does between the steps
  of one inversion), R iterations at every step,
and against a converged reference (cold, 30 iterations) and all-frame attention we report
- the EM objective of the resulting bases (mean over tokens of tau * logsumexp_k x.mu_k / tau; higher is
  better, EM never decreases it),
- the relative L2 error of the STEM-SA output (the layer's own W_Q/W_K/W_V) against the output with the
  converged bases, and against all-frame extended attention (what STEM-SA approximates).
Numbers are means over the steps t >= 1 (step 0 has no previous bases, warm = cold there).
"""
from __future__ import annotations

import statistics
from importlib import import_module
from pathlib import Path

import torch

from . import DEFAULT_OUT, bench_args, boot_host, machine_info, markdown_table, publish

R_VALUES = (0, 1, 2, 3, 5, 8)
SITES = (("input", 1), ("input", 7))
K = 256
TAU = 0.05
REFERENCE_R = 30


def record_features(quick: bool, device, dtype):
    from .bench_inversion import load_clip
    host = boot_host(device, dtype)
    comfy_nodes = host["nodes"]
    tiny = import_module(f"{host['pack'].__name__}.nodes.testing")
    vae = import_module("comfyui_stem.stem_core.tiny_vae").PoolingVAE()
    frames, width, height, steps = (8, 256, 256, 6) if quick else (12, 256, 256, 10)
    images = load_clip("wolf.mp4", frames, width, height)
    model = tiny.build_tiny_model(0, 32)
    clip = tiny.build_tiny_clip(0)
    latent = comfy_nodes.VAEEncode().encode(vae, images)[0]
    cond = comfy_nodes.CLIPTextEncode().encode(clip, "a wolf")[0]
    recorded = {site: [] for site in SITES}

    def recorder(n, context, value, extra_options):
        block = extra_options.get("block")
        site = (block[0], int(block[1])) if block else None
        if site in recorded:
            recorded[site].append(n.detach().to("cpu", torch.float32).clone())
        return n, context, value

    m = model.clone()
    m.set_model_attn1_patch(recorder)
    with torch.no_grad():
        comfy_nodes.NODE_CLASS_MAPPINGS["STEMInvert"]().invert(m, latent, cond, steps)
    unet = model.model.diffusion_model
    weights = {}
    for site in SITES:
        block = unet.input_blocks[site[1]] if site[0] == "input" else unet.middle_block
        attn1 = block[1].transformer_blocks[0].attn1
        weights[site] = {name: getattr(attn1, f"to_{name}").weight.detach().float().cpu() for name in ("q", "k", "v")}
        weights[site]["heads"] = attn1.heads
    setup = {"clip": "wolf.mp4", "frames": frames, "width": width, "height": height, "steps": steps}
    return recorded, weights, setup


def objective(x, bases, tau):
    """mean over tokens of tau * logsumexp_k(x . mu_k / tau); x [1, M, C], bases [1, K, C]"""
    return float((torch.bmm(x, bases.transpose(1, 2)) / tau).logsumexp(-1).mean() * tau)


def stem_out(x, bases, w, frames):
    from comfyui_stem.stem_core.attention import stem_attention
    q = x.reshape(frames, -1, x.shape[-1]) @ w["q"].T
    return stem_attention(q, bases @ w["k"].T, bases @ w["v"].T, frames, w["heads"])


def all_frame_out(x, w, frames):
    from comfyui_stem.stem_core.attention import all_frame_attention
    xf = x.reshape(frames, -1, x.shape[-1])
    return all_frame_attention(xf @ w["q"].T, xf @ w["k"].T, xf @ w["v"].T, frames, w["heads"], frame_chunk=4)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def run(quick: bool, device: torch.device, dtype: torch.dtype, out_dir: Path = DEFAULT_OUT) -> dict:
    from comfyui_stem.stem_core.em import estimate_bases
    recorded, weights, setup = record_features(quick, device, dtype)
    results = {}
    for site in SITES:
        xs = recorded[site]
        frames = setup["frames"]
        w = weights[site]
        per_step = []
        for t, xt in enumerate(xs):
            x = xt.reshape(1, -1, xt.shape[-1])
            ref = estimate_bases(x, K, REFERENCE_R, TAU, seed=0).bases
            per_step.append({"x": x, "ref_bases": ref, "ref_out": stem_out(x, ref, w, frames),
                             "all_out": all_frame_out(x, w, frames), "ref_obj": objective(x, ref, TAU)})
        wd = w
        site_rows = []
        for r in R_VALUES:
            for mode in ("cold", "warm"):
                prev = None
                obj_gap, err_ref, err_all = [], [], []
                for t, st in enumerate(per_step):
                    init = prev if (mode == "warm" and prev is not None) else None
                    bases = estimate_bases(st["x"], K, r, TAU, seed=0, init_bases=init).bases
                    prev = bases
                    if t == 0:
                        continue
                    out = stem_out(st["x"], bases, wd, frames)
                    obj_gap.append(st["ref_obj"] - objective(st["x"], bases, TAU))
                    err_ref.append(rel(out, st["ref_out"]))
                    err_all.append(rel(out, st["all_out"]))
                site_rows.append({"R": r, "start": mode, "objective_gap": statistics.mean(obj_gap),
                                  "err_vs_converged": statistics.mean(err_ref), "err_vs_all_frame": statistics.mean(err_all)})
        ref_err_all = statistics.mean(rel(st["ref_out"], st["all_out"]) for st in per_step[1:])
        name = f"{site[0]}_{site[1]}"
        results[name] = {"tokens": int(per_step[0]["x"].shape[1]), "channels": int(per_step[0]["x"].shape[2]),
                         "converged_err_vs_all_frame": ref_err_all,
                         "converged_objective": statistics.mean(st["ref_obj"] for st in per_step[1:]),
                         "rows": site_rows}
    payload = {"machine": machine_info(device, dtype), "setup": setup, "K": K, "tau": TAU,
               "reference_R": REFERENCE_R, "sites": results}
    return publish(out_dir, "r_study", payload, tables)


def tables(payload) -> str:
    s = payload["setup"]
    out = [f"R study: tiny model features of {s['clip']} ({s['frames']} frames {s['width']}x{s['height']}, "
           f"{s['steps']} per-frame inversion steps), K={payload['K']}, tau={payload['tau']}, float32; means over "
           f"steps 1..{s['steps'] - 1}. objective gap = converged (R={payload['reference_R']}) objective minus "
           f"achieved (lower is better); errors are relative L2 errors of the STEM-SA output.", ""]
    for name, site in payload["sites"].items():
        out.append(f"### {name}: {site['tokens']} tokens (all frames), C={site['channels']}; converged STEM-SA vs "
                   f"all-frame error {site['converged_err_vs_all_frame']:.4f}")
        out.append("")
        rows = []
        for r in R_VALUES:
            c = next(x for x in site["rows"] if x["R"] == r and x["start"] == "cold")
            w = next(x for x in site["rows"] if x["R"] == r and x["start"] == "warm")
            rows.append([r, f"{c['objective_gap']:.4g}", f"{w['objective_gap']:.4g}", f"{c['err_vs_converged']:.4f}",
                         f"{w['err_vs_converged']:.4f}", f"{c['err_vs_all_frame']:.4f}", f"{w['err_vs_all_frame']:.4f}"])
        out.append(markdown_table(["R", "obj gap cold", "obj gap warm", "err vs converged cold",
                                   "err vs converged warm", "err vs all-frame cold", "err vs all-frame warm"], rows))
        out.append("")
    return "\n".join(out)


def main(argv=None):
    a, device, dtype, out = bench_args(__doc__, argv)
    run(a.quick, device, dtype, out)


if __name__ == "__main__":
    main()
