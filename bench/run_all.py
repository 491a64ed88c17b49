"""Run every STEM benchmark: ``python -m bench.run_all [--quick] [--device cpu|cuda] [--dtype fp32|fp16|bf16]``.

Benchmarks (each in its own child process, so peak-memory readings start from a clean process and one
benchmark's caches do not leak into the next):
- attention: per-frame / 2-frame / all-frame / STEM-SA layer times and memory vs frame count,
- em_kernel: achieved FLOP/s of the E and M steps vs a plain matmul,
- inversion: whole DDIM inversion with the tiny model on a real shared clip,
- r_study:   EM objective / attention-output error vs R, cold vs warm start,
- long_clip: 120 frames of 512x512 loaded, encoded and STEM-inverted: wall/user/sys time, peak RSS, page faults,
- resolution_sweep: whole inversion at 256..1024 px, per_frame / stem / two_frame / all_frame, tiny and full-size
  UNet (``--quick``: tiny model, 256 and 512 px),
- extrapolation: STEM Invert + Reconstruct error with and without Videoshop's noise extrapolation, per step count,
then the PNG plots. Results: JSON + markdown tables in --out (bench/results/ by default, git-ignored),
tables on stdout. ``--only attention,plot`` runs a subset.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from . import CHILD_ENV, DEFAULT_OUT, REPO

BENCHES = ("attention", "em_kernel", "inversion", "r_study", "long_clip", "resolution_sweep", "extrapolation")
MODULES = {name: f"bench.bench_{name}" for name in BENCHES}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the STEM benchmarks (see bench/README.md).")
    parser.add_argument("--quick", action="store_true", help="a small grid (estimated ~3-4 minutes on an idle 2-core CPU)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                        help="default: fp16 on cuda, fp32 on cpu")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHES + ('plot',))}")
    a = parser.parse_args(argv)

    device = a.device
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = a.dtype or ("fp16" if device == "cuda" else "fp32")
    only = [x.strip() for x in a.only.split(",") if x.strip()] or list(BENCHES) + ["plot"]
    unknown = set(only) - set(BENCHES) - {"plot"}
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ, **CHILD_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    failed = []
    start_all = time.perf_counter()
    for name in BENCHES:
        if name not in only:
            continue
        cmd = [sys.executable, "-m", MODULES[name], "--device", device, "--dtype", dtype, "--out", str(out)]
        if a.quick:
            cmd.append("--quick")
            if name == "resolution_sweep":
                cmd += ["--models", "tiny"]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd, cwd=str(REPO), env=env)
        print(f"== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if "plot" in only:
        from .plot import plot
        plot(out)
    print(f"== all done in {time.perf_counter() - start_all:.0f} s; results in {out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
