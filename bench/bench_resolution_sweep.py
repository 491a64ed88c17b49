"""Resolution sweep: whole DDIM inversion at 256, 512, 768 and 1024 px for per_frame, stem, two_frame and
all_frame, side by side, on the tiny model and on the full-size SD1.5 UNet (random weights), for each attention
backend of ComfyUI on the CPU (PyTorch SDPA, and ComfyUI's default sub-quadratic attention).

    python -m bench.bench_resolution_sweep [--quick] [--models tiny,full] [--backends sdpa,subquad]
        [--sizes 256,512,768,1024] [--frames 2] [--steps 2] [--limit-s 900]

Each configuration runs in a child process (wall time, peak RSS from rusage, and a torch.profiler split of the
time into attention, EM and the rest for the STEM and per-frame runs). Ratios are to per_frame of the same model,
backend and size, measured in the same run. Every mode uses the same backend (the STEM bases and the baselines
go through the same attention function). A configuration whose estimate exceeds the free memory is skipped and
reported as such (all_frame at 1024 px on the full-size UNet, for example).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from . import DEFAULT_OUT, REPO, bench_args, machine_info, markdown_table, publish

MODES = ("per_frame", "stem", "two_frame", "all_frame")


def _child(model_kind: str, backend: str, mode: str, size: int, frames: int, steps: int) -> dict:
    import torch
    sys.path.insert(0, str(REPO / "scripts"))
    import comfy_host
    options = {"use_pytorch_cross_attention": backend == "sdpa"}
    host = comfy_host.boot_in_process(cpu=True, cli_args=options)
    from importlib import import_module
    pack = host["pack"].__name__
    m = host["mappings"]
    with torch.inference_mode():
        if model_kind == "full":
            import comfy.sd
            cache = os.path.expanduser(os.environ.get("STEM_CACHE", "~/.cache/comfyui-stem"))
            path = os.path.join(cache, "checkpoints", "random_sd15-v1.safetensors")
            if not os.path.exists(path):
                subprocess.run([sys.executable, "-m", "tests.fixtures.checkpoints", "sd15"], cwd=REPO, check=True)
            model, clip = comfy.sd.load_checkpoint_guess_config(path, output_vae=False)[:2]
        else:
            testing = import_module(f"{pack}.nodes.testing")
            model, clip = testing.build_tiny_model(0, 32), testing.build_tiny_clip(0)
        cond = host["nodes"].CLIPTextEncode().encode(clip, "a landscape")[0]
        latent = {"samples": torch.randn(frames, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))}
        patched = model if mode == "per_frame" else m["STEMBasisEstimate"]().patch(
            model, mode, 256, 3, 0.05, 0, "paper", "all", False, "tokens", 0)[0]
        m["STEMInvert"]().invert(patched, latent, cond, 1)  # warm-up: loads the model, builds the kernels
        from torch.profiler import ProfilerActivity, profile
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            m["STEMInvert"]().invert(patched, latent, cond, steps)
        wall = time.perf_counter() - t0
    attention = sum(e.self_cpu_time_total for e in prof.key_averages()
                    if "attention" in e.key or "softmax" in e.key or e.key in ("aten::baddbmm",))
    em = sum(e.self_cpu_time_total for e in prof.key_averages()
             if e.key in ("aten::bmm", "aten::baddbmm_", "aten::exp_", "aten::amax", "aten::clamp_min_", "aten::topk"))
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1
    return {"wall_s": wall, "attention_share": attention / total, "em_share": em / total,
            "backend_function": type(getattr(import_module("comfy.ldm.modules.attention"), "optimized_attention",
                                             None)).__name__ and getattr(import_module("comfy.ldm.modules.attention"),
                                                                         "optimized_attention").__name__}


def run_config(model_kind, backend, mode, size, frames, steps, limit_s):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "bench.bench_resolution_sweep", "--child", model_kind, backend, mode, str(size),
           str(frames), str(steps)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"skipped": f"over {limit_s:.0f} s"}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = next((line for line in reversed(tail) if "MemoryBudgetError" in line), tail[-1] if tail else "?")
        return {"skipped": reason[-300:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak_rss_bytes"] = after.ru_maxrss * 1024
    out["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out


def tables(payload: dict) -> str:
    out = []
    for (model_kind, backend), rows in payload["groups"].items():
        header = ["size", "tokens/frame"] + [f"{m} time" for m in MODES] + [f"{m} peak RSS" for m in MODES] + \
                 ["STEM: attention / EM share"]
        table = []
        for size, results in rows.items():
            base = results.get("per_frame", {})
            cells = [f"{size}px", (int(size) // 8) ** 2]
            for mode in MODES:
                r = results.get(mode, {})
                if "wall_s" in r and "wall_s" in base:
                    cells.append(f"{r['wall_s']:.1f} s ({r['wall_s'] / base['wall_s']:.2f}x)")
                else:
                    cells.append(r.get("skipped", "-")[:40])
            for mode in MODES:
                r = results.get(mode, {})
                if "peak_rss_bytes" in r and "peak_rss_bytes" in base:
                    cells.append(f"{r['peak_rss_bytes'] / 2**30:.2f} GiB ({r['peak_rss_bytes'] / base['peak_rss_bytes']:.2f}x)")
                else:
                    cells.append("-")
            stem = results.get("stem", {})
            cells.append(f"{100 * stem.get('attention_share', 0):.0f}% / {100 * stem.get('em_share', 0):.0f}%"
                         if "wall_s" in stem else "-")
            table.append(cells)
        fn = next((r.get("backend_function") for res in rows.values() for r in res.values() if r.get("backend_function")),
                  "?")
        out.append(f"{model_kind} model, backend {backend} (ComfyUI optimized_attention = {fn}), "
                   f"{payload['frames']} frames, {payload['steps']} steps, CPU; ratios to per_frame\n"
                   + markdown_table(header, table) + "\n")
    return "\n".join(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        model_kind, backend, mode, size, frames, steps = argv[1], argv[2], argv[3], *map(int, argv[4:7])
        print(json.dumps(_child(model_kind, backend, mode, size, frames, steps)))
        return

    def extra(p):
        p.add_argument("--models", default="tiny,full")
        p.add_argument("--backends", default="sdpa,subquad")
        p.add_argument("--sizes", default="256,512,768,1024")
        p.add_argument("--frames", type=int, default=2)
        p.add_argument("--steps", type=int, default=2)
        p.add_argument("--limit-s", type=float, default=900)
    a, device, dtype, out = bench_args(__doc__, argv, extra)
    sizes = [256, 512] if a.quick else [int(s) for s in a.sizes.split(",")]
    groups = {}
    for model_kind in a.models.split(","):
        for backend in a.backends.split(","):
            rows = groups.setdefault((model_kind, backend), {})
            for size in sizes:
                for mode in MODES:
                    r = run_config(model_kind, backend, mode, size, a.frames, a.steps, a.limit_s)
                    rows.setdefault(size, {})[mode] = r
                    print(f"{model_kind} {backend} {size}px {mode}: {r}", flush=True)
    payload = {"machine": machine_info(device, dtype), "frames": a.frames, "steps": a.steps,
               "groups": {k: v for k, v in groups.items()}}
    json_ready = dict(payload, groups={f"{k[0]}/{k[1]}": v for k, v in groups.items()})
    from . import write_json
    write_json(out / "resolution_sweep.json", json_ready)
    text = tables(payload)
    (out / "resolution_sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
