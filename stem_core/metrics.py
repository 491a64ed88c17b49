"""Video metrics for reconstruction quality and temporal consistency (DESIGN.md section 9).

Inputs are ComfyUI IMAGE batches: float tensors [N, H, W, C] in 0..1 (C = 3 usually; uint8
arrays are accepted and divided by 255). Per-frame results are 1-D tensors.

- Reconstruction: ``psnr_per_frame`` and ``ssim_per_frame`` of a reconstruction against its
  source (paper Table 6).
- Temporal consistency: ``warp_error_per_frame``, the mean squared error between each edited
  frame and the previous edited frame warped by the SOURCE video's optical flow (paper Table 2,
  reported there x1e-3). The paper uses RAFT; we use a weight-free OpenCV flow and name it in
  every report, because numbers from different flows are not comparable.
- Reporting: ``summarize``, ``format_report``, ``report_json`` and ``plot_curves_png``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import cv2
import kornia
import numpy as np
import torch

__all__ = [
    "PSNR_CAP_DB",
    "SSIM_WINDOW",
    "FLOW_METHODS",
    "psnr_per_frame",
    "ssim_per_frame",
    "optical_flow",
    "flow_method_name",
    "warp_error_per_frame",
    "frame_difference_per_frame",
    "summarize",
    "format_report",
    "report_json",
    "plot_curves_png",
]

#: PSNR of identical frames is infinite; it is reported as this value so reports stay finite.
PSNR_CAP_DB = 100.0
#: Gaussian window of SSIM (Wang et al. 2004: 11x11, sigma 1.5), computed on valid windows only.
SSIM_WINDOW = 11
FLOW_METHODS = ("dis", "farneback")
#: minimum frame side for optical flow (OpenCV's DIS refuses images under 12 pixels)
MIN_FLOW_SIDE = 16


# ----------------------------------------------------------------------------------------------
# input checks


def _to_images(x, name: str) -> torch.Tensor:
    """Any IMAGE-like input -> float32 CPU tensor [N, H, W, C] in 0..1."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be an IMAGE tensor [N, H, W, C], got {type(x).__name__}")
    if x.ndim == 3:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, a single picture; metrics take a batch of frames "
            "[N, H, W, C] (add a leading frame dimension)"
        )
    if x.ndim != 4:
        raise ValueError(f"{name} must be an IMAGE batch [N, H, W, C], got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one frame")
    if x.dtype == torch.uint8:
        return x.detach().cpu().float() / 255.0
    return x.detach().cpu().float()


def _describe(x: torch.Tensor) -> str:
    n, h, w, c = x.shape
    frames = "frame" if n == 1 else "frames"
    extra = "" if c == 3 else f" with {c} channels"
    return f"{n} {frames} of {w}x{h}{extra}"


def _pair(a, b, a_name: str, b_name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    a = _to_images(a, a_name)
    b = _to_images(b, b_name)
    if a.shape != b.shape:
        hint = "pass the same frames"
        if a.shape[1:] != b.shape[1:]:
            hint += " at the same size (resize one of them)"
        raise ValueError(f"{a_name} has {_describe(a)} but {b_name} has {_describe(b)}; {hint}")
    return a, b


# ----------------------------------------------------------------------------------------------
# reconstruction


def psnr_per_frame(a, b, data_range: float = 1.0, a_name: str = "reconstruction",
                   b_name: str = "source") -> torch.Tensor:
    """PSNR in dB per frame. a, b: [N, H, W, C] in 0..data_range. Returns [N] float64.

    Identical frames (MSE 0) give ``PSNR_CAP_DB`` (100 dB) instead of infinity, and every value is
    capped there, so summaries and JSON stay finite.
    """
    a, b = _pair(a, b, a_name, b_name)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    psnr = 10.0 * torch.log10(float(data_range) ** 2 / mse)  # inf where mse == 0
    return torch.nan_to_num(psnr, posinf=PSNR_CAP_DB).clamp(max=PSNR_CAP_DB)


def ssim_per_frame(a, b, a_name: str = "reconstruction", b_name: str = "source",
                   chunk: int = 8) -> torch.Tensor:
    """SSIM per frame via ``kornia.metrics.ssim`` (11x11 Gaussian window, valid windows only,
    mean over pixels and channels). a, b: [N, H, W, C] in 0..1, H and W >= 11. Returns [N] float64.

    Frames are processed ``chunk`` at a time to bound memory on long videos.
    """
    a, b = _pair(a, b, a_name, b_name)
    h, w = a.shape[1], a.shape[2]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (its window), got {w}x{h}"
        )
    out = []
    for i in range(0, a.shape[0], max(int(chunk), 1)):
        x = a[i:i + chunk].permute(0, 3, 1, 2).contiguous()
        y = b[i:i + chunk].permute(0, 3, 1, 2).contiguous()
        smap = kornia.metrics.ssim(x, y, SSIM_WINDOW, max_val=1.0, padding="valid")
        out.append(smap.flatten(1).mean(1).double())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# temporal consistency


def flow_method_name(method: str = "dis") -> str:
    """Human-readable name of a flow method, as it must appear next to warp-error numbers."""
    method = _check_method(method)
    if method == "dis":
        return "OpenCV DIS optical flow (preset MEDIUM)"
    return "OpenCV Farneback optical flow"


def _check_method(method: str) -> str:
    m = str(method).lower()
    if m not in FLOW_METHODS:
        raise ValueError(f"unknown optical flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")
    return m


def _grey_u8(frame) -> np.ndarray:
    """[H, W] / [H, W, C] frame (uint8, or float in 0..1) -> contiguous uint8 grey [H, W]."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    f = np.asarray(frame)
    if f.dtype != np.uint8:
        f = np.clip(np.rint(f.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if f.ndim == 3:
        if f.shape[2] == 1:
            f = f[..., 0]
        else:
            f = cv2.cvtColor(np.ascontiguousarray(f[..., :3]), cv2.COLOR_RGB2GRAY)
    if f.ndim != 2:
        raise ValueError(f"a frame must be [H, W] or [H, W, C], got shape {f.shape}")
    return np.ascontiguousarray(f)


def optical_flow(prev, next, method: str = "dis") -> np.ndarray:
    """Dense optical flow from ``prev`` to ``next``: [H, W, 2] float32 (dx, dy) such that
    ``prev[y, x] ~= next[y + dy, x + dx]``.

    prev, next: grey uint8 [H, W] (colour or float 0..1 frames are converted), sides >= 16.
    method: "dis" (cv2.DISOpticalFlow, preset MEDIUM) or "farneback" (cv2.calcOpticalFlowFarneback,
    pyramid 0.5 x 3 levels, window 15).
    """
    method = _check_method(method)
    p, n = _grey_u8(prev), _grey_u8(next)
    if p.shape != n.shape:
        raise ValueError(f"optical_flow needs frames of the same size, got {p.shape} and {n.shape}")
    if min(p.shape) < MIN_FLOW_SIDE:
        raise ValueError(f"optical flow needs frames of at least {MIN_FLOW_SIDE}x{MIN_FLOW_SIDE}, got {p.shape[1]}x{p.shape[0]}")
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(p, n, None)
    else:
        flow = cv2.calcOpticalFlowFarneback(p, n, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return np.ascontiguousarray(flow, dtype=np.float32)


def _sample_coords(flow: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs + flow[..., 0], ys + flow[..., 1]


def _occlusion_mask(flow_bwd: np.ndarray, flow_fwd: np.ndarray) -> np.ndarray:
    """Pixels of frame n whose match in frame n-1 is trustworthy: inside the frame, and the
    forward-backward round trip comes back (Sundaram et al. 2010 test:
    |b + f(p+b)|^2 <= 0.01 (|b|^2 + |f(p+b)|^2) + 0.5). Returns bool [H, W]."""
    h, w = flow_bwd.shape[:2]
    mx, my = _sample_coords(flow_bwd)
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    f_at = cv2.remap(flow_fwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    round_trip = ((flow_bwd + f_at) ** 2).sum(-1)
    magnitude = (flow_bwd ** 2).sum(-1) + (f_at ** 2).sum(-1)
    return inside & (round_trip <= 0.01 * magnitude + 0.5)


def warp_error_per_frame(edited, source, method: str = "dis", occlusion_mask: bool = True,
                         edited_name: str = "edited", source_name: str = "source"
                         ) -> Tuple[torch.Tensor, str]:
    """Flow warp error between consecutive edited frames, guided by the source video's motion.

    edited, source: [N, H, W, C] in 0..1, same shape, sides >= 16.
    For n = 1..N-1: the backward flow of the SOURCE from frame n to frame n-1 tells where each
    pixel of frame n was in frame n-1; edited frame n-1 is warped onto frame n with cv2.remap
    (bilinear) and the error is the mean over pixels and channels of the squared difference
    (0..1 scale; the paper prints it x1e-3).
    occlusion_mask=True (default, as in Lai et al. 2018) averages only over pixels that pass a
    forward-backward consistency check and whose match lies inside the frame; if a frame pair
    leaves no such pixel the plain mean is used. occlusion_mask=False averages over all pixels.
    Returns (errors [N-1] float64, flow_name). A single frame gives an empty tensor.
    """
    method = _check_method(method)
    edited, source = _pair(edited, source, edited_name, source_name)
    name = flow_method_name(method) + (", occlusion-masked" if occlusion_mask else "")
    n, h, w, _ = source.shape
    if n < 2:
        return torch.zeros(0, dtype=torch.float64), name
    if min(h, w) < MIN_FLOW_SIDE:
        raise ValueError(f"warp error needs frames of at least {MIN_FLOW_SIDE}x{MIN_FLOW_SIDE}, got {w}x{h}")
    grey = [_grey_u8(f) for f in source.numpy()]
    ed = edited.numpy()
    errors = []
    for i in range(1, n):
        if np.array_equal(grey[i], grey[i - 1]):
            # no motion: skip the estimator, whose sub-pixel noise would blur a still frame
            bwd = np.zeros((h, w, 2), np.float32)
        else:
            bwd = optical_flow(grey[i], grey[i - 1], method)
        mx, my = _sample_coords(bwd)
        warped = cv2.remap(np.ascontiguousarray(ed[i - 1]), mx, my, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        if warped.ndim == 2:  # cv2 drops a single channel
            warped = warped[..., None]
        sq = ((ed[i].astype(np.float64) - warped.astype(np.float64)) ** 2).mean(-1)
        if occlusion_mask:
            fwd = -bwd if not bwd.any() else optical_flow(grey[i - 1], grey[i], method)
            valid = _occlusion_mask(bwd, fwd)
            errors.append(float(sq[valid].mean()) if valid.any() else float(sq.mean()))
        else:
            errors.append(float(sq.mean()))
    return torch.tensor(errors, dtype=torch.float64), name


def frame_difference_per_frame(frames) -> torch.Tensor:
    """Naive temporal change without motion compensation: MSE between frame n and n-1.
    frames: [N, H, W, C] in 0..1 -> [N-1] float64 (empty for one frame)."""
    x = _to_images(frames, "frames").double()
    if x.shape[0] < 2:
        return torch.zeros(0, dtype=torch.float64)
    return ((x[1:] - x[:-1]) ** 2).flatten(1).mean(1)


# ----------------------------------------------------------------------------------------------
# reports

# display label, scale applied for display, number format
_DISPLAY = {
    "psnr": ("PSNR (dB, capped at %g)" % PSNR_CAP_DB, 1.0, "{:.2f}"),
    "ssim": ("SSIM", 1.0, "{:.4f}"),
    "warp_error": ("warp error (MSE x1e-3)", 1e3, "{:.3f}"),
    "frame_difference": ("frame difference (MSE x1e-3)", 1e3, "{:.3f}"),
}


def _values(v) -> List[float]:
    if isinstance(v, torch.Tensor):
        return [float(x) for x in v.detach().cpu().double().flatten()]
    if isinstance(v, np.ndarray):
        return [float(x) for x in v.astype(np.float64).ravel()]
    return [float(x) for x in v]


def _finite(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None


def summarize(per_frame: Mapping[str, Iterable[float]]) -> Dict[str, Dict[str, Optional[float]]]:
    """{metric: per-frame values} -> {metric: {"mean", "min", "max", "count"}} over finite values.

    A metric with no finite value gets None for mean/min/max (count 0)."""
    out = {}
    for key, vals in per_frame.items():
        finite = [x for x in _values(vals) if math.isfinite(x)]
        if finite:
            out[key] = {"mean": sum(finite) / len(finite), "min": min(finite), "max": max(finite),
                        "count": len(finite)}
        else:
            out[key] = {"mean": None, "min": None, "max": None, "count": 0}
    return out


def _first_frames(per_frame: Dict[str, List[float]]) -> Dict[str, int]:
    """Pairwise metrics (one value fewer than the frame count, e.g. warp error) belong to frames
    1..N-1: value k compares frame k+1 with frame k."""
    n = max((len(v) for v in per_frame.values()), default=0)
    return {k: (1 if len(v) == n - 1 else 0) for k, v in per_frame.items()}


def format_report(per_frame: Mapping[str, Iterable[float]], flow_name: Optional[str] = None,
                  title: str = "STEM video metrics", notes: Optional[Sequence[str]] = None,
                  per_frame_table: bool = True) -> str:
    """Human-readable multi-line report: one summary line per metric, then a per-frame table.

    Known keys get labels and units: "psnr", "ssim", "warp_error" (shown x1e-3 like the paper,
    with ``flow_name``), "frame_difference"; other keys are printed as they are."""
    vals = {k: _values(v) for k, v in per_frame.items()}
    summary = summarize(vals)
    first = _first_frames(vals)
    n_frames = max((len(v) + first[k] for k, v in vals.items()), default=0)
    lines = [f"{title} ({n_frames} frame{'s' if n_frames != 1 else ''})"]
    labels = {}
    for key in vals:
        label, scale, fmt = _DISPLAY.get(key, (key, 1.0, "{:.4g}"))
        labels[key] = (scale, fmt)
        s = summary[key]
        if s["count"] == 0:
            lines.append(f"  {label}: no value")
            continue
        lines.append(f"  {label}: mean {fmt.format(s['mean'] * scale)}  min {fmt.format(s['min'] * scale)}  "
                     f"max {fmt.format(s['max'] * scale)}")
    if flow_name and any("warp" in k for k in vals):
        lines.append(f"  warp error flow: {flow_name}")
    for note in notes or ():
        lines.append(f"  {note}")
    if per_frame_table and vals and n_frames > 0:
        keys = list(vals)
        width = {k: max(len(k), 10) for k in keys}
        lines.append("per frame:")
        lines.append("  frame  " + "  ".join(k.rjust(width[k]) for k in keys))
        for f in range(n_frames):
            cells = []
            for k in keys:
                idx = f - first[k]
                if 0 <= idx < len(vals[k]) and math.isfinite(vals[k][idx]):
                    scale, fmt = labels[k]
                    cells.append(fmt.format(vals[k][idx] * scale).rjust(width[k]))
                else:
                    cells.append("-".rjust(width[k]))
            lines.append(f"  {f:5d}  " + "  ".join(cells))
    return "\n".join(lines)


def report_json(per_frame: Mapping[str, Iterable[float]], flow_name: Optional[str] = None,
                meta: Optional[Mapping] = None) -> Dict:
    """JSON-ready dict: per metric its mean/min/max, per-frame list and first frame index.

    Only finite numbers appear (non-finite values become null); raw units (warp error is NOT
    multiplied by 1e3 here)."""
    vals = {k: _values(v) for k, v in per_frame.items()}
    summary = summarize(vals)
    first = _first_frames(vals)
    metrics = {}
    for k, v in vals.items():
        metrics[k] = dict(summary[k])
        metrics[k]["first_frame"] = first[k]
        metrics[k]["per_frame"] = [_finite(x) for x in v]
    out = {
        "frames": max((len(v) + first[k] for k, v in vals.items()), default=0),
        "metrics": metrics,
        "psnr_cap_db": PSNR_CAP_DB,
        "flow": flow_name,
    }
    if meta:
        out["meta"] = dict(meta)
    json.dumps(out, allow_nan=False)  # fail here, not in the caller's file writer
    return out


# ----------------------------------------------------------------------------------------------
# plot

_COLOURS_BGR = [(200, 90, 20), (30, 30, 210), (40, 150, 40), (160, 40, 160), (0, 140, 230), (120, 120, 0)]


def _text(img, s, org, scale=0.45, colour=(30, 30, 30), thickness=1):
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def _text_width(s, scale=0.45, thickness=1) -> int:
    return cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0]


def plot_curves_png(curves: Mapping[str, Sequence[float]], path: Optional[str], title: str = "",
                    size: Tuple[int, int] = (800, 450),
                    x_starts: Optional[Mapping[str, int]] = None) -> np.ndarray:
    """Per-frame line chart, drawn with OpenCV only, written to ``path`` as PNG (skipped if None).

    curves: {name: per-frame values}; each curve is normalised to its own min..max (the y axis
    runs 0..1) and the legend under the plot gives its real min and max. Non-finite values are
    skipped. x_starts: first frame index per curve (default 0; e.g. 1 for warp error).
    size: (width, height) of the image. Returns the chart as an RGB uint8 array [height, width, 3].
    """
    width, height = int(size[0]), int(size[1])
    names = list(curves)
    legend_h = 22 * max(len(names), 1)
    left, right, top, bottom = 56, 20, 40, 42 + legend_h
    if width < left + right + 100 or height < top + bottom + 80:
        raise ValueError(f"plot size {width}x{height} is too small for {len(names)} curve(s)")
    img = np.full((height, width, 3), 255, np.uint8)
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot area (y0 top, y1 bottom)
    _text(img, title, (max((width - _text_width(title, 0.6)) // 2, 4), 26), 0.6, (0, 0, 0), 1)

    starts = {k: int((x_starts or {}).get(k, 0)) for k in names}
    series = {k: _values(curves[k]) for k in names}
    n_x = max((len(series[k]) + starts[k] for k in names), default=0)
    x_max = max(n_x - 1, 1)

    def px(i):
        return int(round(x0 + (x1 - x0) * i / x_max))

    def py(v):
        return int(round(y1 - (y1 - y0) * v))

    # grid, axes and ticks
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = py(frac)
        cv2.line(img, (x0, y), (x1, y), (225, 225, 225), 1)
        _text(img, f"{frac:.2f}", (x0 - 44, y + 4), 0.4)
    tick_step = max(1, int(math.ceil(n_x / 12)))
    for i in range(0, max(n_x, 1), tick_step):
        x = px(i)
        cv2.line(img, (x, y1), (x, y1 + 4), (0, 0, 0), 1)
        label = str(i)
        _text(img, label, (x - _text_width(label, 0.4) // 2, y1 + 18), 0.4)
    cv2.line(img, (x0, y0), (x0, y1), (0, 0, 0), 1)
    cv2.line(img, (x0, y1), (x1, y1), (0, 0, 0), 1)
    _text(img, "frame", (x1 - _text_width("frame", 0.4), y1 + 34), 0.4)
    _text(img, "normalised", (4, y0 - 8), 0.4)

    if not names or n_x == 0:
        _text(img, "no data", ((x0 + x1) // 2 - 30, (y0 + y1) // 2), 0.6)
    for j, k in enumerate(names):
        colour = _COLOURS_BGR[j % len(_COLOURS_BGR)]
        pts = [(starts[k] + i, v) for i, v in enumerate(series[k]) if math.isfinite(v)]
        ly = y1 + 42 + 22 * j + 12
        cv2.line(img, (x0, ly - 4), (x0 + 24, ly - 4), colour, 2)
        if not pts:
            _text(img, f"{k}: no finite value", (x0 + 32, ly), 0.45)
            continue
        lo = min(v for _, v in pts)
        hi = max(v for _, v in pts)
        span = hi - lo
        # a constant curve sits in the middle
        norm = [(i, (v - lo) / span if span > 0 else 0.5) for i, v in pts]
        poly = np.array([[px(i), py(v)] for i, v in norm], np.int32)
        if len(poly) > 1:
            cv2.polylines(img, [poly.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        for p in poly:
            cv2.circle(img, (int(p[0]), int(p[1])), 3, colour, -1, cv2.LINE_AA)
        _text(img, f"{k}: min {lo:.4g}  max {hi:.4g}  mean {sum(v for _, v in pts) / len(pts):.4g}",
              (x0 + 32, ly), 0.45)

    if path:
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        if not cv2.imwrite(str(path), img):
            raise OSError(f"could not write the plot to {path}")
    return img[..., ::-1].copy()


def video_metrics(source, result, warp_error: bool = True, flow_method: str = "dis", check_interrupt=None):
    """Per-frame PSNR and SSIM of ``result`` against ``source`` (IMAGE [N, H, W, 3]) and, with ``warp_error`` and
    more than one frame, the flow-warped temporal error -> (per-frame dict, flow name or None)."""
    per_frame = {"psnr": psnr_per_frame(result, source, a_name="result", b_name="source"),
                 "ssim": ssim_per_frame(result, source, a_name="result", b_name="source")}
    flow_name = None
    if warp_error and result.shape[0] > 1:
        if check_interrupt is not None:
            check_interrupt()
        per_frame["warp_error"], flow_name = warp_error_per_frame(result, source, method=flow_method)
    return per_frame, flow_name
