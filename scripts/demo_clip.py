"""A small synthetic video the project generates itself (no downloaded footage needed).

A colourful textured background pans slowly while a few coloured shapes move across it, so
that optical flow has texture to lock on to and the blur or flicker of an inversion /
reconstruction is easy to see. Deterministic for a given seed.

    python scripts/demo_clip.py OUT.mp4 [--frames 16 --size 256 --fps 12 --seed 0]

Used by `make demo` and the tests' synthetic clips; written with the pack's video writer (H.264).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import Optional, Sequence

import cv2
import numpy as np

import comfy_host

write_video = importlib.import_module(f"{comfy_host.import_pack().__name__}.stem_core.video_io").write_video

__all__ = ["demo_frames", "make_demo_clip", "main"]

_PAN_PER_FRAME = (1.5, 0.5)  # background motion in pixels per frame at size 256 (x, y)
_SHIFT = 4  # cv2 drawing: coordinates in 1/16 pixel for smooth sub-pixel motion


def _background(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    """Textured RGB float32 canvas [h, w, 3] in 0..1: smooth colour blobs, finer grain and stripes."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coarse = cv2.resize(rng.rand(6, 6, 3).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.rand(max(h // 8, 2), max(w // 8, 2), 3).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_LINEAR)
    stripes = 0.5 + 0.5 * np.sin((xx * 0.9 + yy * 0.4) * (2 * math.pi / 23.0))
    img = 0.55 * coarse + 0.25 * fine + 0.2 * stripes[..., None] * np.array([0.9, 0.8, 0.6], np.float32)
    lo, hi = img.min(), img.max()
    return np.clip((img - lo) / (hi - lo) * 0.75 + 0.12, 0.0, 1.0)  # keep away from pure black/white


def _pt(x: float, y: float):
    return int(round(x * (1 << _SHIFT))), int(round(y * (1 << _SHIFT)))


def demo_frames(frames: int = 16, size: int = 256, seed: int = 0) -> np.ndarray:
    """The demo clip's frames: uint8 RGB [frames, size, size, 3]."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if size < 32 or size % 8:
        raise ValueError(f"size must be a multiple of 8 and at least 32 (SD latents are 1/8 of it), got {size}")
    rng = np.random.RandomState(seed)
    s = size / 256.0
    pan_x, pan_y = _PAN_PER_FRAME[0] * s, _PAN_PER_FRAME[1] * s
    margin = 8
    canvas_w = int(math.ceil(size + pan_x * frames)) + 2 * margin
    canvas_h = int(math.ceil(size + pan_y * frames)) + 2 * margin
    canvas = _background(rng, canvas_h, canvas_w)

    # shapes: (kind, colour RGB, start x, start y, velocity x, velocity y, radius)
    r = size / 9.0
    shapes = [
        ("circle", (0.90, 0.15, 0.10), 0.20 * size, 0.35 * size, 2.2 * s, 0.6 * s, r),
        ("square", (0.10, 0.35, 0.95), 0.75 * size, 0.70 * size, -1.6 * s, -1.0 * s, 0.9 * r),
        ("triangle", (0.98, 0.85, 0.10), 0.55 * size, 0.20 * size, -0.8 * s, 1.5 * s, 0.8 * r),
    ]
    phase = rng.uniform(0, 2 * math.pi, size=len(shapes))

    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        # sub-pixel pan of the background window (bilinear crop)
        m = np.float32([[1, 0, margin + pan_x * t], [0, 1, margin + pan_y * t]])
        frame = cv2.warpAffine(canvas, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
        for k, (kind, colour, x0, y0, vx, vy, rad) in enumerate(shapes):
            x = x0 + vx * t
            y = y0 + vy * t + 0.04 * size * math.sin(0.5 * t + phase[k])
            x = x % (size + 2 * rad) - rad  # wrap around so long clips keep their shapes
            col = tuple(float(c) for c in colour)
            if kind == "circle":
                cv2.circle(frame, _pt(x, y), int(round(rad * (1 << _SHIFT))), col, -1, cv2.LINE_AA, _SHIFT)
                cv2.circle(frame, _pt(x - 0.3 * rad, y - 0.3 * rad), int(round(0.25 * rad * (1 << _SHIFT))),
                           (1.0, 0.9, 0.85), -1, cv2.LINE_AA, _SHIFT)  # highlight: texture inside the shape
            else:
                n_corners = 4 if kind == "square" else 3
                angle = 0.08 * t + phase[k]
                pts = np.array([_pt(x + rad * math.cos(angle + 2 * math.pi * j / n_corners),
                                    y + rad * math.sin(angle + 2 * math.pi * j / n_corners))
                                for j in range(n_corners)], np.int32)
                cv2.fillPoly(frame, [pts], col, cv2.LINE_AA, _SHIFT)
                cv2.polylines(frame, [pts], True, (0.05, 0.05, 0.05), 2, cv2.LINE_AA, _SHIFT)
        out[t] = np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
    return out


def make_demo_clip(path: str, frames: int = 16, size: int = 256, fps: float = 12, seed: int = 0) -> str:
    """Write the demo clip as an H.264 mp4 to ``path``; returns ``path``.

    frames: frame count; size: width = height in pixels (multiple of 8, >= 32); fps: frame rate;
    seed: texture and motion phases. Same arguments -> same pixels before encoding.
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    rgb = demo_frames(frames, size, seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return write_video(rgb, path, float(fps))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="demo_clip.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output .mp4 path")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=256, help="width = height, multiple of 8")
    ap.add_argument("--fps", type=float, default=12)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        make_demo_clip(a.out, frames=a.frames, size=a.size, fps=a.fps, seed=a.seed)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {a.frames} frames of {a.size}x{a.size} at {a.fps:g} fps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
