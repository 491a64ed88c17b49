"""Resolution sweep: whole DDIM inversion at 256, 512, 768 and 1024 px for per_frame, stem, two_frame and
all_frame, side by side, on the tiny model and on the full-size SD1.5 UNet (random weights), for each attention
backend of ComfyUI on the CPU (PyTorch SDPA, and ComfyUI's default sub-quadratic attention).

    python -m bench.bench_resolution_sweep [--quick] [--models tiny,full] [--backends sdpa,subquad]
        [--sizes 256,512,768,1024|640x360] [--frames 2] [--steps 2] [--modes per_frame,stem,...] [--limit-s 900]
        [--device cuda]

Each configuration runs in a child process (wall and CPU time, peak memory of the timed inversion above the loaded
model as in bench.PeakMemory, and a torch.profiler split of the
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

from . import CHILD_ENV, REPO, PeakMemory, bench_args, machine_info, markdown_table, write_json

MODES = ("per_frame", "stem", "two_frame", "all_frame")


def parse_size(size: str) -> tuple:
    """"512" -> (512, 512); "640x360" -> (640, 360) (width x height in pixels)."""
    w, _, h = str(size).partition("x")
    return int(w), int(h or w)


def _child(model_kind: str, backend: str, mode: str, size: str, frames: int, steps: int, device: str = "cpu") -> dict:
    import torch
    sys.path.insert(0, str(REPO / "scripts"))
    import comfy_host
    options = {"use_pytorch_cross_attention": backend == "sdpa"}
    host = comfy_host.boot_in_process(cpu=device == "cpu", cli_args=options)
    width, height = parse_size(size)
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
        latent = {"samples": torch.randn(frames, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(0))}
        patched = model if mode == "per_frame" else m["STEMBasisEstimate"]().patch(
            model, mode, 256, 3, 0.05, 0, "paper", "all", False, "tokens", 0)[0]
        m["STEMInvert"]().invert(patched, latent, cond, 1)  # warm-up: loads the model, builds the kernels
        from torch.profiler import ProfilerActivity, profile
        t0, c0 = time.perf_counter(), time.process_time()
        with PeakMemory(torch.device(device)) as peak, profile(activities=[ProfilerActivity.CPU]) as prof:
            m["STEMInvert"]().invert(patched, latent, cond, steps)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    attention = sum(e.self_cpu_time_total for e in prof.key_averages()
                    if "attention" in e.key or "softmax" in e.key or e.key in ("aten::baddbmm",))
    em = sum(e.self_cpu_time_total for e in prof.key_averages()
             if e.key in ("aten::bmm", "aten::baddbmm_", "aten::exp_", "aten::amax", "aten::clamp_min_", "aten::topk"))
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1
    # peak_bytes: what the timed inversion allocated above the loaded model (bench.PeakMemory); process_peak_bytes:
    # this child's own high-water mark, model and host included.
    return {"wall_s": wall, "cpu_s": cpu, "peak_bytes": peak.peak_bytes,
            "process_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "attention_share": attention / total, "em_share": em / total,
            "backend_function": type(getattr(import_module("comfy.ldm.modules.attention"), "optimized_attention",
                                             None)).__name__ and getattr(import_module("comfy.ldm.modules.attention"),
                                                                         "optimized_attention").__name__}


def run_config(model_kind, backend, mode, size, frames, steps, limit_s, device="cpu"):
    cmd = [sys.executable, "-m", "bench.bench_resolution_sweep", "--child", model_kind, backend, mode, str(size),
           str(frames), str(steps), device]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit_s,
                              env=dict(os.environ, **CHILD_ENV))
    except subprocess.TimeoutExpired:
        return {"skipped": f"over {limit_s:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = next((line for line in reversed(tail) if "MemoryBudgetError" in line), tail[-1] if tail else "?")
        return {"skipped": reason[-300:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tables(payload: dict) -> str:
    out = []
    for (model_kind, backend), rows in payload["groups"].items():
        header = ["size", "tokens/frame"] + [f"{m} time" for m in MODES] + [f"{m} peak memory" for m in MODES] + \
                 ["STEM: attention / EM share"]
        table = []
        for size, results in rows.items():
            base = results.get("per_frame", {})
            w, h = parse_size(size)
            cells = [f"{w}x{h}", (w // 8) * (h // 8)]
            for mode in MODES:
                r = results.get(mode, {})
                if "wall_s" in r and "wall_s" in base:
                    cells.append(f"{r['wall_s']:.1f} s ({r['wall_s'] / base['wall_s']:.2f}x), "
                                 f"CPU {r['cpu_s']:.1f} s ({r['cpu_s'] / base['cpu_s']:.2f}x)")
                elif "wall_s" in r:  # per_frame did not finish: the time alone
                    cells.append(f"{r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s")
                else:
                    cells.append(r.get("skipped", "-")[:40])
            for mode in MODES:
                r = results.get(mode, {})
                if r.get("peak_bytes") and base.get("peak_bytes"):
                    cells.append(f"{r['peak_bytes'] / 2**20:.0f} MiB ({r['peak_bytes'] / base['peak_bytes']:.2f}x)")
                elif r.get("peak_bytes"):
                    cells.append(f"{r['peak_bytes'] / 2**20:.0f} MiB")
                else:
                    cells.append("-")
            stem = results.get("stem", {})
            cells.append(f"{100 * stem.get('attention_share', 0):.0f}% / {100 * stem.get('em_share', 0):.0f}%"
                         if "wall_s" in stem else "-")
            table.append(cells)
        fn = next((r.get("backend_function") for res in rows.values() for r in res.values() if r.get("backend_function")),
                  "?")
        def faster(results, key):
            stem, base = results.get("stem", {}), results.get("per_frame", {})
            return key in stem and key in base and stem[key] < base[key]
        below = {key: [size for size, results in rows.items() if faster(results, key)] for key in ("wall_s", "cpu_s")}
        crossing = (f"STEM below 1.0x of per_frame at: {', '.join(below['wall_s']) or 'no size'} (wall time), "
                    f"{', '.join(below['cpu_s']) or 'no size'} (CPU time)")
        out.append(f"{model_kind} model, backend {backend} (ComfyUI optimized_attention = {fn}), "
                   f"{payload['frames']} frames, {payload['steps']} steps, {payload['machine']['device']}; ratios to per_frame\n"
                   + markdown_table(header, table) + f"\n{crossing}.\n")
    return "\n".join(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        model_kind, backend, mode, size, frames, steps = argv[1], argv[2], argv[3], argv[4], *map(int, argv[5:7])
        print(json.dumps(_child(model_kind, backend, mode, size, frames, steps, *argv[7:8])))
        return

    def extra(p):
        p.add_argument("--models", default="tiny,full")
        p.add_argument("--backends", default="sdpa,subquad")
        p.add_argument("--sizes", default="256,512,768,1024")
        p.add_argument("--frames", type=int, default=2)
        p.add_argument("--steps", type=int, default=2)
        p.add_argument("--limit-s", type=float, default=900)
        p.add_argument("--modes", default=",".join(MODES))
    a, device, dtype, out = bench_args(__doc__, argv, extra)
    sizes = ["256", "512"] if a.quick else a.sizes.split(",")
    modes = a.modes.split(",")
    groups = {}

    def save() -> str:  # after every configuration, so a long sweep cut short keeps what it measured
        payload = {"machine": machine_info(device, dtype), "frames": a.frames, "steps": a.steps, "groups": groups}
        write_json(out / "resolution_sweep.json", dict(payload, groups={f"{k[0]}/{k[1]}": v for k, v in groups.items()}))
        text = tables(payload)
        (out / "resolution_sweep.md").write_text(text)
        return text

    for model_kind in a.models.split(","):
        for backend in a.backends.split(","):
            rows = groups.setdefault((model_kind, backend), {})
            for size in sizes:
                for mode in modes:
                    r = run_config(model_kind, backend, mode, size, a.frames, a.steps, a.limit_s, device.type)
                    rows.setdefault(size, {})[mode] = r
                    print(f"{model_kind} {backend} {size}px {mode}: {r}", flush=True)
                    save()
    print(save())
    from .plot import plot_resolution_sweep
    print(f"plot: {plot_resolution_sweep(out)}")

if __name__ == "__main__":
    main()
