"""Attention-layer benchmark: per-frame, 2-frame, all-frame extended and STEM-SA side by side.

One SD1.5 self-attention layer (attn1: to_q/to_k/to_v projections, 8-head attention, to_out) applied to
the same random, clustered features of a whole video x [N, L, C]:
- per-frame:  every frame attends to itself (plain 2D DDIM inversion).
- 2-frame:    every frame attends to the middle frame (FateZero's code; the STEM paper describes [n, middle]).
- all-frame:  every frame attends to all N frames (extended attention), the pack's
              ``all_frame_attention`` with the patch's query chunking.
- STEM-SA:    EM bases of all N*L tokens (K = 128/256/512, R = 3, tau = 0.05, cold start from K random
              tokens) then every frame attends to the K projected bases (paper Eq. 7). The row
              "K=256 warm R=1" starts EM from converged bases of the same features (the warm start the
              patch does between inversion steps) and runs one iteration.
Sizes: tokens per frame L = 1024 (32x32, C = 640) and 4096 (64x64, C = 320), the SD1.5 channel counts of
those levels at 512x512; frames N in {8, 16, 32, 48}.

Each (L, N) cell runs every method in interleaved rounds (one run of each method per round, so a load
change on a shared machine hits all methods alike); the reported time is the median over the rounds
after a warm-up run of every method. Expensive configurations get fewer rounds.

All-frame attention costs O(N^2 L^2): when a full run is predicted (from the per-frame throughput of
the same cell) to exceed the per-run budget, only the queries of s < N frames are run against the keys
and values of all N frames and the time is scaled: t = t(k, v projections of all frames)
+ t(q projection + attention + out projection of s frames) * N / s. That is exact up to timing
noise because the cost of extended attention is linear in the number of query frames; such cells are
marked "scaled from s/N query frames" and their memory is that of the s-frame run (a lower bound).
A configuration predicted to exceed even that budget, or the memory budget, is listed as skipped.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from comfyui_stem.stem_core.attention import all_frame_attention, attention, stem_attention, middle_frame_context
from comfyui_stem.stem_core.em import estimate_bases
from comfyui_stem.stem_core.attention import ALL_FRAME_QUERY_CHUNK

from . import (DEFAULT_OUT, bench_args, publish, PeakMemory, fmt_bytes, fmt_s, machine_info, markdown_table,
               sync, write_json)

HEADS = 8
TAU = 0.05
R = 3
SIZES = ((1024, 640), (4096, 320))  # (tokens per frame, channels): 32x32 and 64x64 levels of SD1.5
FRAMES = (8, 16, 32, 48)
QUICK_GRID = {1024: (8, 16, 32, 48), 4096: (8,)}
METHODS = ("per_frame", "two_frame", "all_frame", "stem128", "stem256", "stem512", "stem256_warm1")
LABELS = {"per_frame": "per-frame", "two_frame": "2-frame", "all_frame": "all-frame",
          "stem128": "STEM K=128 R=3", "stem256": "STEM K=256 R=3", "stem512": "STEM K=512 R=3",
          "stem256_warm1": "STEM K=256 warm R=1"}


# ----------------------------------------------------------------------------------------------------
# inputs


def clustered_features(frames: int, tokens: int, channels: int, seed: int = 0, clusters: int = 48) -> torch.Tensor:
    """x [frames, tokens, channels] (float32, CPU): a piecewise-constant segmentation of each frame into
    ``clusters`` feature centres that drifts across frames (camera motion), plus noise, layer-normed like
    the input of SD1.5's attn1. Real video features are clustered; Gaussian noise would flatter EM."""
    g = torch.Generator().manual_seed(seed)
    side = int(math.isqrt(tokens))
    centres = torch.randn(clusters, channels, generator=g)
    coarse = torch.randint(0, clusters, (1, 1, 12, 12), generator=g).float()
    big = F.interpolate(coarse, size=(2 * side, 2 * side), mode="nearest")[0, 0].long()
    x = torch.empty(frames, tokens, channels)
    for n in range(frames):
        shift = (n * side) // (2 * max(frames, 8))  # up to half a frame of motion over the clip
        labels = big[shift:shift + side, shift // 2:shift // 2 + side].reshape(-1)
        x[n] = centres[labels]
    x.add_(torch.randn(x.shape, generator=g), alpha=0.5)
    return F.layer_norm(x, (channels,))


def layer_weights(channels: int, device, dtype, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 / math.sqrt(channels)
    w = {name: (torch.randn(channels, channels, generator=g) * scale).to(device, dtype)
         for name in ("q", "k", "v", "o")}
    w["o_bias"] = torch.zeros(channels, device=device, dtype=dtype)
    return w


# ----------------------------------------------------------------------------------------------------
# the layer variants: x [N, L, C] -> [N, L, C]


def _out(w, h):
    return F.linear(h, w["o"], w["o_bias"])


def per_frame_layer(x, w):
    q, k, v = F.linear(x, w["q"]), F.linear(x, w["k"]), F.linear(x, w["v"])
    return _out(w, attention(q, k, v, HEADS))


def two_frame_layer(x, w):
    n = x.shape[0]
    q, k, v = F.linear(x, w["q"]), F.linear(x, w["k"]), F.linear(x, w["v"])
    return _out(w, attention(q, middle_frame_context(k, n), middle_frame_context(v, n), HEADS))


def all_frame_layer(x, w):
    n = x.shape[0]
    q, k, v = F.linear(x, w["q"]), F.linear(x, w["k"]), F.linear(x, w["v"])
    return _out(w, all_frame_attention(q, k, v, n, HEADS, frame_chunk=ALL_FRAME_QUERY_CHUNK))


def all_frame_subset(x, w, s, parts: dict):
    """The keys/values of all frames, the queries of the first s frames; records both parts' times."""
    n, l, c = x.shape
    device = x.device
    start = time.perf_counter()
    k_seq = F.linear(x, w["k"]).reshape(1, n * l, c)
    v_seq = F.linear(x, w["v"]).reshape(1, n * l, c)
    sync(device)
    mid = time.perf_counter()
    q = F.linear(x[:s], w["q"]).reshape(1, s * l, c)
    step = ALL_FRAME_QUERY_CHUNK * l
    out = torch.cat([attention(q[:, i:i + step], k_seq, v_seq, HEADS) for i in range(0, s * l, step)], dim=1)
    out = _out(w, out)
    sync(device)
    end = time.perf_counter()
    parts.setdefault("kv", []).append(mid - start)
    parts.setdefault("q_attn", []).append(end - mid)
    return out


def stem_layer(x, w, num_bases, iterations, init_bases=None, parts=None):
    n, l, c = x.shape
    start = time.perf_counter()
    em = estimate_bases(x.reshape(1, n * l, c), num_bases, iterations, TAU, seed=0, init_bases=init_bases)
    if parts is not None:
        sync(x.device)
        parts.setdefault("em", []).append(time.perf_counter() - start)
    mu = em.bases  # [1, K, C]
    kb, vb = F.linear(mu, w["k"]), F.linear(mu, w["v"])
    q = F.linear(x, w["q"])
    return _out(w, stem_attention(q, kb, vb, n, HEADS))


# ----------------------------------------------------------------------------------------------------
# cost model (for predicting what to skip)


def flops(method: str, n: int, l: int, c: int, k: int = 256, r: int = R) -> float:
    proj = 2.0 * n * l * c * c
    if method == "per_frame":
        return 4 * proj + 4.0 * n * l * l * c
    if method == "two_frame":
        return 4 * proj + 8.0 * n * l * l * c
    if method == "all_frame":
        return 4 * proj + 4.0 * (n * l) ** 2 * c
    # STEM: R EM iterations (E and M matmuls), attention to K bases, q and out projections
    return 2 * proj + 4.0 * n * l * k * c * (r + 1)


def stem_params(method: str):
    if method == "stem256_warm1":
        return 256, 1
    return int(method[4:]), R


# ----------------------------------------------------------------------------------------------------


def run(quick: bool, device: torch.device, dtype: torch.dtype, out_dir: Path = DEFAULT_OUT,
        budget_s: float | None = None, tokens_only=None, frames_only=None, methods=None) -> dict:
    budget_s = budget_s if budget_s is not None else (4.0 if quick else 12.0)
    grid = QUICK_GRID if quick else {l: FRAMES for l, _ in SIZES}
    if tokens_only:
        grid = {l: f for l, f in grid.items() if l in tokens_only}
    if frames_only:
        grid = {l: tuple(frames_only) for l in grid}
    methods = tuple(m for m in METHODS if not methods or m in methods or m == "per_frame")
    if device.type == "cuda":
        mem_budget = int(torch.cuda.mem_get_info(device)[0] * 0.8)
    else:
        try:
            import os
            mem_budget = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.6)
        except (ValueError, OSError, AttributeError):
            mem_budget = 8 << 30
    itemsize = torch.finfo(dtype).bits // 8
    rows = []
    for tokens, channels in SIZES:
        if tokens not in grid:
            continue
        w = layer_weights(channels, device, dtype)
        rate = None  # achieved per-frame FLOP/s in this size, for predictions
        warmed = False
        for n in grid[tokens]:
            x = clustered_features(n, tokens, channels).to(device, dtype)
            warm_bases = (estimate_bases(x.reshape(1, n * tokens, channels), 256, 5, TAU, seed=0).bases
                          if "stem256_warm1" in methods else None)
            if rate is None:  # calibrate the cost model (and warm up) with one per-frame run
                start = time.perf_counter()
                per_frame_layer(x, w)
                sync(device)
                rate = flops("per_frame", n, tokens, channels) / (time.perf_counter() - start)
            cell = {}
            fns = {}
            parts = {m: {} for m in methods}
            for method in methods:
                note = ""
                mode = "full"
                s = n
                if method == "per_frame":
                    fn = lambda: per_frame_layer(x, w)
                elif method == "two_frame":
                    fn = lambda: two_frame_layer(x, w)
                elif method == "all_frame":
                    fn = lambda: all_frame_layer(x, w)
                else:
                    k, r = stem_params(method)
                    init = warm_bases if method == "stem256_warm1" else None
                    fn = (lambda k=k, r=r, init=init, p=parts[method]:
                          stem_layer(x, w, k, r, init_bases=init, parts=p))
                io_bytes = 6 * n * tokens * channels * itemsize
                if method == "two_frame":
                    io_bytes += 4 * n * tokens * channels * itemsize
                if io_bytes > mem_budget:
                    cell[method] = {"mode": "skipped", "note": f"skipped: predicted memory {fmt_bytes(io_bytes)} "
                                    f"> budget {fmt_bytes(mem_budget)}"}
                    continue
                if method == "all_frame" and rate is not None:
                    predicted = flops("all_frame", n, tokens, channels) / rate
                    if predicted > budget_s:
                        s = max(1, int(n * budget_s / predicted))
                        predicted_s = predicted * s / n
                        if predicted_s > max(4 * budget_s, 120.0):
                            cell[method] = {"mode": "skipped", "predicted_s": predicted,
                                            "note": f"skipped: predicted {fmt_s(predicted)} per run"}
                            continue
                        mode = f"scaled from {s}/{n} query frames"
                        fn = lambda s=s, p=parts[method]: all_frame_subset(x, w, s, p)
                        note = f"predicted full run {fmt_s(predicted)}"
                cell[method] = {"mode": mode, "s": s, "note": note, "times": [], "peak": None, "mem_kind": None}
                fns[method] = fn
            # warm-up: every method once (the first size's first cell warms kernels; later cells only
            # run the warm-up when cheap, to keep the full grid in budget)
            # (a method predicted to take longer than the budget is not warmed up: the calibration run
            # has warmed the thread pool and kernels, and first-call overheads are small next to it)
            for method, fn in fns.items():
                k_r = stem_params(method) if method.startswith("stem") else (256, R)
                predicted = flops(method, n, tokens, channels, *k_r) / rate * cell[method]["s"] / n
                if (not warmed or n == grid[tokens][0]) and predicted < budget_s:
                    fn()
                    sync(device)
                parts[method].clear()
            warmed = True
            rounds = 3
            for rnd in range(rounds):
                for method, fn in fns.items():
                    c = cell[method]
                    if rnd > 0:
                        t_first = c["times"][0]
                        want = 3 if t_first < budget_s / 4 else (2 if t_first < budget_s else 1)
                        if rnd >= want:
                            continue
                    with PeakMemory(device) as mem:
                        start = time.perf_counter()
                        out = fn()
                        sync(device)
                        c["times"].append(time.perf_counter() - start)
                        del out
                    if mem.peak_bytes is not None:
                        c["peak"] = mem.peak_bytes if c["peak"] is None else max(c["peak"], mem.peak_bytes)
                        c["mem_kind"] = mem.kind
            # results of the cell
            base_t = statistics.median(cell["per_frame"]["times"])
            rate = flops("per_frame", n, tokens, channels) / base_t
            for method in methods:
                c = cell[method]
                row = {"tokens": tokens, "channels": channels, "frames": n, "method": method,
                       "label": LABELS[method], "mode": c["mode"], "note": c.get("note", ""),
                       "time_s": None, "repeats": 0, "peak_bytes": None, "mem_kind": None,
                       "gflop": flops(method, n, tokens, channels, *(stem_params(method) if method.startswith("stem")
                                                                     else (256, R))) / 1e9}
                if c["mode"] != "skipped":
                    row["repeats"] = len(c["times"])
                    row["peak_bytes"], row["mem_kind"] = c["peak"], c["mem_kind"]
                    if c["mode"] == "full":
                        row["time_s"] = statistics.median(c["times"])
                    else:
                        p = parts[method]
                        row["time_s"] = statistics.median(p["kv"]) + statistics.median(p["q_attn"]) * n / c["s"]
                        row["measured_subset_s"] = statistics.median(c["times"])
                    if parts[method].get("em"):
                        row["em_s"] = statistics.median(parts[method]["em"])
                else:
                    row["time_s"] = None
                    row["predicted_s"] = c.get("predicted_s")
                rows.append(row)
            for row in rows[-len(methods):]:
                row["x_per_frame"] = row["time_s"] / base_t if row["time_s"] else None
            af = next((r for r in rows[-len(methods):] if r["method"] == "all_frame"), None)
            for row in rows[-len(methods):]:
                row["speedup_vs_all_frame"] = (af["time_s"] / row["time_s"]) if (
                    af and af["time_s"] and row["time_s"]) else None
            print(f"  attention L={tokens} C={channels} N={n}: " + ", ".join(
                f"{LABELS[r['method']]} {fmt_s(r['time_s'])}" for r in rows[-len(methods):]), flush=True)
            del x, warm_bases
            write_json(out_dir / "attention.partial.json", {"machine": machine_info(device, dtype), "rows": rows})
    payload = {"machine": machine_info(device, dtype), "heads": HEADS, "tau": TAU, "iterations": R,
               "budget_s": budget_s, "quick": quick, "rows": rows}
    return publish(out_dir, "attention", payload, tables)


def tables(payload) -> str:
    rows = payload["rows"]
    m = payload["machine"]
    kind = next((r["mem_kind"] for r in rows if r.get("mem_kind")), "n/a")
    out = [f"Attention layer (attn1 with projections, {payload['heads']} heads), {m['device']} {m['dtype']}, "
           f"{m['cpu_threads']} threads, {m['date']}. Time: median of interleaved rounds; "
           f"(x) = ratio to per-frame. Memory: peak above the inputs, {kind}.", ""]
    notes = []
    for tokens in sorted({r["tokens"] for r in rows}):
        sub = [r for r in rows if r["tokens"] == tokens]
        frames = sorted({r["frames"] for r in sub})
        channels = sub[0]["channels"]
        header = ["method"] + [f"N={n}" for n in frames]
        trows, mrows = [], []
        for method in [m for m in METHODS if any(x["method"] == m for x in sub)]:
            tr, mr = [LABELS[method]], [LABELS[method]]
            for n in frames:
                r = next((x for x in sub if x["method"] == method and x["frames"] == n), None)
                if r is None:
                    tr.append("-")
                    mr.append("-")
                    continue
                if r["time_s"] is None:
                    tr.append("skipped*")
                    mr.append("skipped*")
                    notes.append(f"L={tokens} N={n} {LABELS[method]}: {r['note']}")
                    continue
                star = "" if r["mode"] == "full" else "†"
                tr.append(f"{fmt_s(r['time_s'])}{star} ({r['x_per_frame']:.2f}x)")
                mr.append(fmt_bytes(r["peak_bytes"]) + ("≥" if star else ""))
                if star:
                    notes.append(f"L={tokens} N={n} {LABELS[method]}: {r['mode']} ({r['note']})")
            trows.append(tr)
            mrows.append(mr)
        out.append(f"### {tokens} tokens/frame ({int(math.isqrt(tokens))}x{int(math.isqrt(tokens))}), C={channels}: time")
        out.append("")
        out.append(markdown_table(header, trows))
        out.append("")
        out.append(f"### {tokens} tokens/frame, C={channels}: peak memory")
        out.append("")
        out.append(markdown_table(header, mrows))
        out.append("")
    if notes:
        out.append("Notes: † time scaled from a subset of query frames (exact for all-frame attention, see "
                   "bench_attention.py), ≥ memory of that subset run; * skipped (predicted over budget):")
        out += [f"- {n}" for n in notes]
        out.append("")
    # the target cell
    target = [r for r in rows if r["tokens"] == 4096 and r["frames"] == 48]
    if target:
        s = next(r for r in target if r["method"] == "stem256")
        out.append(f"Target cell (N=48, 4096 tokens): STEM K=256 R=3 = {s['x_per_frame']:.2f}x per-frame "
                   f"(target <= 1.5), {s['speedup_vs_all_frame']:.1f}x faster than all-frame (target >= 5)"
                   if s["time_s"] and s.get("speedup_vs_all_frame") else "Target cell: not measured")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    def extra(parser):
        parser.add_argument("--budget-s", type=float, default=None, help="time budget of one run of one method")
        parser.add_argument("--tokens", default="", help="only these tokens-per-frame sizes, e.g. 4096")
        parser.add_argument("--frames", default="", help="only these frame counts, e.g. 16,48")
        parser.add_argument("--methods", default="", help=f"subset of {','.join(METHODS)} (per_frame always runs)")

    a, device, dtype, out = bench_args(__doc__, argv, extra)
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]
    run(a.quick, device, dtype, out, a.budget_s, ints(a.tokens) or None, ints(a.frames) or None,
        [m for m in a.methods.split(",") if m] or None)


if __name__ == "__main__":
    main()
