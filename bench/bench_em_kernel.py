"""EM kernel benchmark: achieved FLOP/s of the E and M steps against a plain matmul of the same shapes.

For x [G, M, C] (all frames' tokens of a layer) and K bases the E-step is one [M, C] x [C, K] matmul plus a
softmax over K, the M-step one [K, M] x [M, C] matmul plus the division by the responsibility mass; each
matmul is 2*G*M*K*C FLOPs. Measured in the same process, interleaved, on the same device:
- plain matmuls: torch.bmm of exactly those shapes (the E shape and the M shape, with the
  responsibilities in the token-major layout the EM code keeps),
- ``e_step`` and ``m_step`` of stem_core.em (the public, unchunked steps),
- one fused EM iteration as ``estimate_bases`` runs it (E and M steps over token chunks, M-step sums
  accumulated), for several chunk sizes.
Fractions: e_step vs the E matmul, m_step vs the M matmul, one iteration vs the two matmuls together.
The bases are converged bases of clustered features, so the softmax sees the peaked logits of real EM.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from comfyui_stem.stem_core.em import e_step, estimate_bases, m_step

from . import DEFAULT_OUT, bench_args, publish, fmt_s, machine_info, markdown_table, sync
from .bench_attention import TAU, clustered_features

FULL_SHAPES = ((48, 4096, 320, 256), (48, 1024, 640, 256), (16, 4096, 320, 128), (16, 4096, 320, 512))
QUICK_SHAPES = ((8, 4096, 320, 256), (16, 1024, 640, 256))


def _timed(fn, device, times):
    start = time.perf_counter()
    out = fn()
    sync(device)
    times.append(time.perf_counter() - start)
    return out


def run(quick: bool, device: torch.device, dtype: torch.dtype, out_dir: Path = DEFAULT_OUT) -> dict:
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    rounds = 3
    rows = []
    for frames, tokens, channels, k in shapes:
        x = clustered_features(frames, tokens, channels).to(device, dtype).reshape(1, frames * tokens, channels)
        g, m, c = x.shape
        bases = estimate_bases(x, k, 5, TAU, seed=0).bases
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        x_c = x.to(compute)  # the EM code computes in float32; the reference matmuls do too
        b_t = bases.to(compute).transpose(1, 2).contiguous()
        z = e_step(x, bases, TAU)  # [G, M, K]
        chunks = [None, 65536, 16384, 4096] if not quick else [None, 16384]
        chunks = [ch for ch in chunks if ch is None or ch < m]
        fns = {
            "matmul_E": lambda: torch.bmm(x_c, b_t),
            "matmul_M": lambda: torch.bmm(z.transpose(1, 2), x_c),
            "e_step": lambda: e_step(x, bases, TAU),
            "m_step": lambda: m_step(x, z),
        }
        for ch in chunks:
            fns[f"em_iteration_chunk_{ch or 'auto'}"] = (
                lambda ch=ch: estimate_bases(x, k, 1, TAU, init_bases=bases, chunk_tokens=ch).bases)
        times = {name: [] for name in fns}
        for fn in fns.values():  # warm-up
            fn()
            sync(device)
        for _ in range(rounds):
            for name, fn in fns.items():
                _timed(fn, device, times[name])
        med = {name: statistics.median(t) for name, t in times.items()}
        mm_flops = 2.0 * g * m * k * c
        row = {"frames": frames, "tokens_per_frame": tokens, "M": m, "C": c, "K": k, "matmul_gflop": mm_flops / 1e9,
               "time_s": med,
               "gflops": {name: (mm_flops * (2 if name.startswith("em_iteration") else 1)) / t / 1e9
                          for name, t in med.items()}}
        row["fraction"] = {
            "e_step_vs_matmul": med["matmul_E"] / med["e_step"],
            "m_step_vs_matmul": med["matmul_M"] / med["m_step"],
        }
        for name in med:
            if name.startswith("em_iteration"):
                row["fraction"][name + "_vs_2_matmuls"] = (med["matmul_E"] + med["matmul_M"]) / med[name]
        rows.append(row)
        print(f"  EM kernel M={m} C={c} K={k}: " + ", ".join(f"{n} {fmt_s(t)}" for n, t in med.items()), flush=True)
        del x, x_c, z
    payload = {"machine": machine_info(device, dtype), "tau": TAU, "rounds": rounds, "rows": rows}
    return publish(out_dir, "em_kernel", payload, tables)


def tables(payload) -> str:
    m = payload["machine"]
    out = [f"EM kernel, {m['device']} {m['dtype']}, {m['cpu_threads']} threads, {m['date']}: achieved GFLOP/s "
           f"(matmul FLOPs 2*M*K*C per step) and fraction of a plain matmul of the same shape, median of "
           f"{payload['rounds']} interleaved rounds.", ""]
    header = ["M (tokens)", "C", "K", "matmul E", "E-step", "E frac", "matmul M", "M-step", "M frac",
              "EM iter (auto chunk)", "iter frac", "best chunk"]
    trows = []
    for r in payload["rows"]:
        gf, fr = r["gflops"], r["fraction"]
        its = {n: v for n, v in fr.items() if n.startswith("em_iteration")}
        best = max(its, key=its.get)
        trows.append([r["M"], r["C"], r["K"], f"{gf['matmul_E']:.1f}", f"{gf['e_step']:.1f}",
                      f"{fr['e_step_vs_matmul']:.2f}", f"{gf['matmul_M']:.1f}", f"{gf['m_step']:.1f}",
                      f"{fr['m_step_vs_matmul']:.2f}", f"{gf['em_iteration_chunk_auto']:.1f}",
                      f"{fr['em_iteration_chunk_auto_vs_2_matmuls']:.2f}",
                      f"{best.replace('em_iteration_chunk_', '').replace('_vs_2_matmuls', '')} ({its[best]:.2f})"])
    out.append(markdown_table(header, trows))
    out.append("")
    return "\n".join(out)


def main(argv=None):
    a, device, dtype, out = bench_args(__doc__, argv)
    run(a.quick, device, dtype, out)


if __name__ == "__main__":
    main()
