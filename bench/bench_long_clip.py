"""Long clip: load, encode and STEM-invert a long 512x512 clip with the tiny model in a child process, and report
wall, user and system time, peak RSS and minor page faults (from the child's rusage).

    python -m bench.bench_long_clip [--frames 120] [--size 512] [--steps 5] [--no-malloc-tuning] [--out ...]

The clip is synthetic (scripts/demo_clip.py), written once into the results folder. The child runs the pack's
nodes as ComfyUI runs them (in-process host, STEM Load Video -> VAE Encode (the tiny model's pooling VAE) ->
STEM Video Attention (K 256, R 3) -> STEM Invert), so every allocation of the real path is measured.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from . import REPO, bench_args, machine_info, markdown_table, publish


def _child(clip: str, frames: int, size: int, steps: int, device: str = "cpu") -> dict:
    import torch

    from . import boot_host
    host = boot_host(torch.device(device), torch.float32)
    from importlib import import_module
    testing = import_module(f"{host['pack'].__name__}.nodes.testing")
    pooling = import_module("comfyui_stem.stem_core.tiny_vae").PoolingVAE()
    folder_paths = host["folder_paths"]
    folder_paths.set_input_directory(str(Path(clip).parent))
    m = host["mappings"]
    t0 = time.perf_counter()
    with torch.inference_mode():
        images = m["STEMVideoLoad"]().load(Path(clip).name, 0.0, size, size, frames, 0, 1, "resize")[0]
        latent = host["nodes"].VAEEncode().encode(pooling, images)[0]
        del images
        model, clip_model = testing.build_tiny_model(0, 32), testing.build_tiny_clip(0)
        cond = host["nodes"].CLIPTextEncode().encode(clip_model, "a panning texture with moving shapes")[0]
        patched = m["STEMBasisEstimate"]().patch(model, "stem", 256, 3, 0.05, 0, "paper", "all", False, "tokens", 0)[0]
        _, traj, _ = m["STEMInvert"]().invert(patched, latent, cond, steps)
    return {"inner_wall_s": time.perf_counter() - t0, "trajectory_bytes": traj.nbytes()}


def child_environment(malloc_tuning: bool, extra: dict) -> dict:
    """The child's environment: no inherited glibc malloc settings (run_all sets some for its peak-memory
    readings), then the tuning the pack's servers run with (scripts/comfy_host.MALLOC_TUNING) unless switched
    off, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if malloc_tuning:
        sys.path.insert(0, str(REPO / "scripts"))
        from comfy_host import MALLOC_TUNING
        env.update(MALLOC_TUNING)
    env.update(extra)
    return env


def measure(clip: str, frames: int, size: int, steps: int, env: dict, device: str = "cpu") -> dict:
    """Run the child once in ``env``; its rusage gives user/sys time, peak RSS and page faults."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.bench_long_clip", "--child", clip, str(frames), str(size),
                           str(steps), device], cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    inner = json.loads(proc.stdout.strip().splitlines()[-1])
    user, sys_ = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"frames": frames, "size": size, "steps": steps, "wall_s": wall, "user_s": user, "sys_s": sys_,
            "sys_over_user": sys_ / user if user else None, "peak_rss_bytes": after.ru_maxrss * 1024,
            "minor_faults": after.ru_minflt - before.ru_minflt, **inner}


def tables(payload: dict) -> str:
    rows = [[r.get("label", ""), r["frames"], f"{r['size']}x{r['size']}", r["steps"], f"{r['wall_s']:.0f} s",
             f"{r['user_s']:.0f} s", f"{r['sys_s']:.0f} s", f"{100 * r['sys_over_user']:.0f}%",
             f"{r['peak_rss_bytes'] / 2**30:.2f} GiB", f"{r['minor_faults'] / 1e6:.1f} M"] for r in payload["runs"]]
    return ("Long clip: load + encode + STEM inversion, tiny model, in a child process (rusage)\n" +
            markdown_table(["run", "frames", "size", "steps", "wall", "user", "sys", "sys/user", "peak RSS",
                            "minor faults"], rows) + "\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        clip, frames, size, steps = argv[1], *map(int, argv[2:5])
        print(json.dumps(_child(clip, frames, size, steps, *argv[5:6])))
        return

    def extra(p):
        p.add_argument("--frames", type=int, default=120)
        p.add_argument("--size", type=int, default=512)
        p.add_argument("--steps", type=int, default=5)
        p.add_argument("--label", default="")
        p.add_argument("--no-malloc-tuning", action="store_true",
                       help="run the child with glibc's default malloc settings (the 'before' rows)")
        p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                       help="more environment for the child, repeatable")
    a, device, dtype, out = bench_args(__doc__, argv, extra)
    frames, size = (16, 256) if a.quick else (a.frames, a.size)
    out.mkdir(parents=True, exist_ok=True)
    clip = out / f"long_clip_{frames}x{size}.mp4"
    if not clip.exists():
        sys.path.insert(0, str(REPO / "scripts"))
        from demo_clip import make_demo_clip
        make_demo_clip(str(clip), frames=frames, size=size, fps=24, seed=7)
    extra = dict(e.split("=", 1) for e in a.env)
    env = child_environment(not a.no_malloc_tuning, extra)
    run = measure(str(clip), frames, size, a.steps, env, device.type)
    run["env"] = {k: v for k, v in env.items() if k.startswith("MALLOC_") or k in extra}
    run["label"] = a.label or ("glibc defaults" if a.no_malloc_tuning else "pack's server malloc tuning")
    previous = out / "long_clip.json"
    runs = json.loads(previous.read_text())["runs"] if previous.exists() else []
    publish(out, "long_clip", {"machine": machine_info(device, dtype), "runs": runs + [run]}, tables)


if __name__ == "__main__":
    main()
