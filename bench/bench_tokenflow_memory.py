"""Peak memory of STEM TokenFlow Edit versus frame count (tiny test model; not part of the test suite).

Each configuration runs in a fresh subprocess (so one run's allocator caches cannot hide another's
peak): boot ComfyUI in-process, build the tiny seeded SD1.5-architecture model, invert a random clip
with per-frame DDIM, then measure only the edit:

- CUDA present: ``torch.cuda.max_memory_allocated`` minus what was allocated before the edit;
- CPU: peak process RSS sampled every 2 ms by a thread (psutil) minus the RSS just before the edit
  (glibc told to mmap every block >= 64 KiB, so freed tensors leave the RSS at once).

Two configurations per frame count, side by side:
- ``chunked``: the node as shipped (chunk_size 8: N/8 keyframes in one pass, then passes of 8 frames);
- ``whole``: chunk_size = N, i.e. one keyframe and a single propagation pass over the whole video, the
  memory a non-chunked implementation would need for its UNet batch.

Usage: ``python -m bench.bench_tokenflow_memory [--frames 8 16 32] [--size 128] [--steps 2]``
Writes bench/results/tokenflow_memory_<device>.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class _RssPeak:
    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def worker(frames: int, chunk: int, size: int, steps: int) -> dict:
    import gc

    import torch

    from importlib import import_module

    from bench import boot_host
    host = boot_host(torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch.float32)
    comfy_nodes, mappings = host["nodes"], host["mappings"]
    tiny_model = import_module(f"{host['pack'].__name__}.nodes.testing")
    edit_mod = import_module(f"{host['pack'].__name__}.nodes.tokenflow")
    model = tiny_model.build_tiny_model(0, 32)
    clip = tiny_model.build_tiny_clip(0)
    lat = {"samples": torch.randn(frames, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))}
    cond = comfy_nodes.CLIPTextEncode().encode(clip, "a wolf running in the snow")[0]
    target = comfy_nodes.CLIPTextEncode().encode(clip, "a marble sculpture of a wolf")[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, edit_mod.NEGATIVE_DEFAULT)[0]
    with torch.no_grad():
        _, traj, _ = mappings["STEMInvert"]().invert(model, lat, cond, steps)
    # no warm-up edit: a second run would reuse the first one's pages and hide its peak. The worker runs
    # with glibc's mmap threshold at 64 KiB, so freed tensors go back to the OS and RSS tracks live memory.
    gc.collect()
    stats = {}
    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.no_grad():
            edit_mod.tokenflow_edit(model, traj, target, negative, cond, edit_mod.TokenFlowSettings(chunk_size=chunk),
                                    stats=stats)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        how = "torch.cuda.max_memory_allocated"
    else:
        with _RssPeak() as rss, torch.no_grad():
            edit_mod.tokenflow_edit(model, traj, target, negative, cond, edit_mod.TokenFlowSettings(chunk_size=chunk),
                                    stats=stats)
        peak = rss.peak - rss.base
        how = "process RSS peak (psutil, 2 ms sampling)"
    seconds = time.perf_counter() - t0
    return {"frames": frames, "chunk_size": chunk, "size": size, "steps": steps,
            "keyframes": -(-frames // chunk), "peak_bytes": int(peak), "keyframe_store_bytes":
            int(stats.get("peak_store_bytes", 0)), "unet_calls": stats.get("calls"), "seconds": round(seconds, 3),
            "device": "cuda:" + torch.cuda.get_device_name() if cuda else "cpu", "measure": how}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="frame width = height in pixels (multiple of 8)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--worker", nargs=4, type=int, metavar=("FRAMES", "CHUNK", "SIZE", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker)), flush=True)
        return 0
    rows = []
    for frames in args.frames:
        for mode, chunk in (("chunked", args.chunk), ("whole", frames)):
            if mode == "whole" and frames <= args.chunk:  # the same configuration as the chunked run
                rows.append(dict(rows[-1], mode="whole"))
                continue
            cmd = [sys.executable, "-m", "bench.bench_tokenflow_memory", "--worker", str(frames), str(chunk),
                   str(args.size), str(args.steps)]
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), env=env)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
                raise SystemExit(f"worker failed for {frames} frames, chunk {chunk}")
            row = json.loads(line[-1][len("RESULT "):])
            row["mode"] = mode
            rows.append(row)
            print(f"  {frames:4d} frames  {mode:8s} chunk {chunk:4d}: peak {row['peak_bytes'] / 2**20:8.1f} MiB, "
                  f"keyframe store {row['keyframe_store_bytes'] / 2**20:6.2f} MiB, {row['seconds']:.1f} s", flush=True)
    print(f"\nTokenFlow edit peak memory ({rows[0]['measure']}; {rows[0]['device']}, {args.size}x{args.size}, "
          f"{args.steps} steps, tiny model)")
    print(f"{'frames':>7} | {'chunked (chunk ' + str(args.chunk) + ')':>22} | {'whole video (chunk N)':>22} | ratio")
    for frames in args.frames:
        c = next(r for r in rows if r["frames"] == frames and r["mode"] == "chunked")
        w = next(r for r in rows if r["frames"] == frames and r["mode"] == "whole")
        ratio = w["peak_bytes"] / max(c["peak_bytes"], 1)
        print(f"{frames:>7} | {c['peak_bytes'] / 2**20:>18.1f} MiB | {w['peak_bytes'] / 2**20:>18.1f} MiB | "
              f"{ratio:5.2f}")
    base = next(r for r in rows if r["mode"] == "chunked")
    print("growth of the chunked peak relative to the first frame count: " + ", ".join(
        f"{r['frames']}: x{r['peak_bytes'] / max(base['peak_bytes'], 1):.2f}" for r in rows if r["mode"] == "chunked"))
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if rows[0]["device"].startswith("cuda") else "cpu"
    path = args.out / f"tokenflow_memory_{tag}.json"
    path.write_text(json.dumps({"benchmark": "tokenflow_memory", "rows": rows}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
