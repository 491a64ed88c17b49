"""PNG plots of the attention benchmark (time and peak memory against the number of frames) and of the
resolution sweep (whole-inversion time ratio to per-frame against the image size).

Uses matplotlib when it is installed, else draws with OpenCV + numpy (the pack's venv has OpenCV only).
One figure per tokens-per-frame size, two panels (time, log scale; memory, linear scale), one line per
method; scaled (subset) all-frame points are drawn hollow, skipped ones are left out.
Run alone: ``python -m bench.plot [--results bench/results]``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from . import DEFAULT_OUT

COLORS = {  # BGR for OpenCV
    "per_frame": (40, 40, 40), "two_frame": (200, 120, 0), "all_frame": (30, 30, 220),
    "stem128": (60, 180, 60), "stem256": (0, 140, 0), "stem512": (0, 90, 0), "stem256_warm1": (200, 0, 200),
    "stem": (0, 140, 0),
}


def _series(rows, tokens, key):
    out = {}
    for r in rows:
        if r["tokens"] != tokens or r.get(key) is None:
            continue
        out.setdefault(r["method"], []).append((r["frames"], r[key], r["mode"] == "full", r["label"]))
    return {m: sorted(v) for m, v in out.items()}


def _nice_ticks(lo, hi, log):
    if log:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        return [10.0 ** e for e in range(a, b + 1)]
    step = 10 ** (math.floor(math.log10(max(hi - lo, 1e-12))) - 1)
    for mult in (1, 2, 5, 10, 20, 50, 100):
        if (hi - lo) / (step * mult) <= 6:
            step *= mult
            break
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + 1e-9:
        ticks.append(v)
        v += step
    return ticks


def _panel_cv2(img, x0, y0, w, h, series, title, ylabel, log, fmt, xlabel="frames N"):
    import cv2
    font = cv2.FONT_HERSHEY_SIMPLEX
    xs = sorted({p[0] for s in series.values() for p in s})
    ys = [p[1] for s in series.values() for p in s if p[1] > 0]
    if not xs or not ys:
        return
    ylo, yhi = (min(ys) / 1.5, max(ys) * 1.5) if log else (0.0, max(ys) * 1.1)
    ticks = _nice_ticks(ylo, yhi, log)
    ylo, yhi = min(ylo, ticks[0]), max(yhi, ticks[-1])
    xlo, xhi = 0, max(xs) * 1.05

    def px(xv, yv):
        fx = (xv - xlo) / (xhi - xlo)
        if log:
            fy = (math.log10(yv) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))
        else:
            fy = (yv - ylo) / (yhi - ylo)
        return int(x0 + fx * w), int(y0 + h - fy * h)

    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), (0, 0, 0), 1)
    for t in ticks:
        _, py = px(xlo, t)
        if y0 <= py <= y0 + h:
            cv2.line(img, (x0, py), (x0 + w, py), (225, 225, 225), 1)
            cv2.putText(img, fmt(t), (x0 - 70, py + 5), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for xv in xs:
        pxv, _ = px(xv, ylo)
        cv2.line(img, (pxv, y0 + h), (pxv, y0 + h + 5), (0, 0, 0), 1)
        cv2.putText(img, str(xv), (pxv - 8, y0 + h + 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, title, (x0, y0 - 12), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (x0 + w // 2 - 30, y0 + h + 40), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (x0 - 70, y0 - 12 + h + 62), font, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    for method, pts in series.items():
        color = COLORS.get(method, (100, 100, 100))
        prev = None
        for xv, yv, full, _ in pts:
            if yv <= 0:
                continue
            p = px(xv, yv)
            if prev is not None:
                cv2.line(img, prev, p, color, 2, cv2.LINE_AA)
            cv2.circle(img, p, 4, color, -1 if full else 1, cv2.LINE_AA)
            prev = p


def _plot_cv2(payload, tokens, path: Path):
    import cv2
    import numpy as np
    rows = payload["rows"]
    width, height = 1200, 560
    img = np.full((height, width, 3), 255, np.uint8)
    channels = next(r["channels"] for r in rows if r["tokens"] == tokens)
    m = payload["machine"]
    cv2.putText(img, f"Attention layer, {tokens} tokens/frame, C={channels}, {m['device']} {m['dtype']} "
                     f"({m.get('cpu_threads')} threads) {m['date'][:10]}",
                (20, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    _panel_cv2(img, 100, 70, 420, 380, _series(rows, tokens, "time_s"), "time per layer call (log)", "seconds",
               True, lambda t: f"{t:g}s")
    mem = {k: [(x, y / 2**20, f, l) for x, y, f, l in v] for k, v in _series(rows, tokens, "peak_bytes").items()}
    kind = next((r["mem_kind"] for r in rows if r.get("mem_kind")), "peak memory")
    _panel_cv2(img, 640, 70, 420, 380, mem, f"peak memory ({kind})", "MiB", False, lambda t: f"{t:g}")
    # legend
    y = 80
    for method, color in COLORS.items():
        label = next((r["label"] for r in rows if r["method"] == method), method)
        cv2.line(img, (1075, y), (1100, y), color, 2)
        cv2.putText(img, label, (1105, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
        y += 20
    cv2.putText(img, "hollow: scaled from a subset", (1070, y + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 0), 1)
    cv2.putText(img, "of query frames", (1070, y + 24), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


def _plot_mpl(payload, tokens, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = payload["rows"]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5))
    for method, pts in _series(rows, tokens, "time_s").items():
        ax_t.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=pts[0][3])
    for method, pts in _series(rows, tokens, "peak_bytes").items():
        ax_m.plot([p[0] for p in pts], [p[1] / 2**20 for p in pts], marker="o", label=pts[0][3])
    ax_t.set_yscale("log")
    ax_t.set_xlabel("frames N")
    ax_t.set_ylabel("seconds")
    ax_m.set_xlabel("frames N")
    ax_m.set_ylabel("MiB")
    ax_t.legend(fontsize=7)
    m = payload["machine"]
    fig.suptitle(f"Attention layer, {tokens} tokens/frame, {m['device']} {m['dtype']} {m['date'][:10]}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_resolution_sweep(results_dir: Path = DEFAULT_OUT):
    """resolution_sweep.png: one panel per (model, backend), whole-inversion wall-time ratio to per_frame
    against the image size, one line per mode (OpenCV drawing, so it works in the pack's venv)."""
    import cv2
    import numpy as np
    src = results_dir / "resolution_sweep.json"
    if not src.exists():
        return None
    payload = json.loads(src.read_text())
    groups = payload["groups"]
    width = 40 + 520 * max(1, len(groups))
    img = np.full((520, width, 3), 255, np.uint8)
    m = payload["machine"]
    cv2.putText(img, f"Whole inversion, {payload['frames']} frames, {payload['steps']} steps, {m['device']} "
                     f"{m['dtype']} {m['date'][:10]}: time / per_frame time", (20, 25), cv2.FONT_HERSHEY_SIMPLEX,
                0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (group, rows) in enumerate(sorted(groups.items())):
        series = {}
        for size, results in rows.items():
            base = results.get("per_frame", {}).get("wall_s")
            for mode, r in results.items():
                if base and "wall_s" in r:
                    series.setdefault(mode, []).append((int(size.partition("x")[0]), r["wall_s"] / base, True, mode))
        _panel_cv2(img, 100 + 520 * i, 70, 400, 380, {k: sorted(v) for k, v in series.items()}, group,
                   "ratio", False, lambda t: f"{t:g}x", xlabel="width (px)")
    y = 80
    for mode in ("per_frame", "stem", "two_frame", "all_frame"):
        cv2.line(img, (width - 130, y), (width - 105, y), COLORS[mode], 2)
        cv2.putText(img, mode, (width - 100, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        y += 20
    path = results_dir / "resolution_sweep.png"
    cv2.imwrite(str(path), img)
    return path


def plot(results_dir: Path = DEFAULT_OUT) -> list:
    sweep = plot_resolution_sweep(results_dir)
    if sweep is not None:
        print(f"  plot: {sweep}")
    src = results_dir / "attention.json"
    if not src.exists():
        print(f"  plot: {src} not found (run the attention benchmark first)")
        return [sweep] if sweep else []
    payload = json.loads(src.read_text())
    try:
        import matplotlib  # noqa: F401
        draw = _plot_mpl
    except ImportError:
        draw = _plot_cv2
    paths = []
    for tokens in sorted({r["tokens"] for r in payload["rows"]}):
        path = results_dir / f"attention_{tokens}.png"
        draw(payload, tokens, path)
        paths.append(path)
        print(f"  plot: {path}")
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(DEFAULT_OUT))
    a = parser.parse_args(argv)
    plot(Path(a.results))


if __name__ == "__main__":
    main()
