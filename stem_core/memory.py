"""Byte estimates of the pack's heavy objects, computed from shapes BEFORE anything is allocated, and the
preflight that compares an estimate with what is free.

Every estimate is a pure function of the settings a node knows before it starts. ``check_fits`` raises
``MemoryBudgetError`` with the estimate, the limit and the settings that fit, so that a clip or a store that
cannot fit is refused with figures instead of ending in an allocator error or the OOM killer.
"""
from __future__ import annotations

import math
import os
import shutil
from typing import Callable, Iterable, Mapping, Optional

from .errors import MemoryBudgetError, STEMError
from .sites import site_info

GB = 1e9
SD15_HEADS = 8
TEXT_TOKENS = 77  # one CLIP chunk: FateZero supports prompts of up to 75 tokens
# Keep this share of the free memory for everything the estimate does not count (model, activations, Python).
HEADROOM = 0.8


def gb(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= 0.1 * GB else f"{n / 2**20:.0f} MiB"


def available_ram_bytes() -> int:
    """Memory the OS can give this process now (Linux MemAvailable; else free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def available_disk_bytes(folder: str) -> int:
    os.makedirs(folder, exist_ok=True)
    return shutil.disk_usage(folder).free


def check_fits(needed: int, available: int, what: str, fixes: str) -> None:
    """MemoryBudgetError when ``needed`` bytes exceed HEADROOM of ``available``."""
    limit = int(available * HEADROOM)
    if needed > limit:
        raise MemoryBudgetError(f"{what} needs {gb(needed)}, but {gb(available)} is free ({gb(limit)} usable); "
                                f"{fixes}")


def largest_fitting(count: int, estimate: Callable[[int], int], limit: int) -> int:
    """The largest n <= count with estimate(n) <= limit (estimate non-decreasing in n); 0 if none."""
    lo, hi = 0, count
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(mid) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ------------------------------------------------------------------------------------------------------------
# the FateZero attention store


def fused_steps(fraction: float, steps: int) -> int:
    """Number of leading (noisiest) editing steps a replace fraction in [0, 1] fuses."""
    if not (0.0 <= float(fraction) <= 1.0):
        raise STEMError(f"a replace-steps fraction must be in [0, 1], got {fraction}")
    return int(math.floor(float(fraction) * int(steps) + 1e-6))


LATENT_BLEND_WINDOW = (0.2, 0.8)


def latent_blend_steps(steps: int) -> list:
    """Editing steps j after which FateZero's latent blend runs: floor(0.2 N) < j + 1 < floor(0.8 N)."""
    lo, hi = (fused_steps(f, steps) for f in LATENT_BLEND_WINDOW)
    return [j for j in range(steps) if lo < j + 1 < hi]


def recorded_store_steps(steps: int, self_fraction: float, cross_fraction: float, blend_masks: bool) -> dict:
    """Inversion steps (store indices) whose maps the edit reads, by kind: editing step j reads store step
    N - 1 - j. "self" (and the STEM responsibilities): the self-replace window; "cross": the cross-replace window;
    "blend": the blend sites' cross maps wherever a blend mask is needed (the self window and FateZero's
    latent-blend window), only with ``blend_masks``."""
    def store(js):
        return sorted({steps - 1 - j for j in js})
    self_js = range(fused_steps(self_fraction, steps))
    out = {"self": store(self_js), "cross": store(range(fused_steps(cross_fraction, steps)))}
    out["blend"] = store(list(self_js) + latent_blend_steps(steps)) if blend_masks else []
    return out


def fatezero_store_bytes(frames: int, latent_hw, sites: Iterable, modes: Mapping, steps: int, num_bases: int,
                         self_fraction: float = 1.0, cross_fraction: float = 1.0, blend_masks: bool = True,
                         blend_sites: Iterable = (), heads: int = SD15_HEADS) -> int:
    """Bytes of a FateZero attention store (maps float16, STEM responsibilities float32).

    Per recorded step and site: self maps [frames, heads, HW, Lk] with Lk = K (stem; K clamped to the video's
    tokens), HW (per_frame, two_frame's middle frame) or frames * HW (all_frame); cross maps [frames, heads, HW,
    77]; under STEM the responsibilities [frames * HW, K]. HW is the site's tokens per frame for a latent of
    latent_hw = (h, w). Steps as :func:`recorded_store_steps`."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    rec = recorded_store_steps(steps, self_fraction, cross_fraction, blend_masks)
    blend_sites = set(tuple(s) for s in blend_sites)
    total = 0
    for site in sites:
        hw = site_info(site).tokens(h, w)
        mode = modes.get(tuple(site), "per_frame")
        k = min(int(num_bases), frames * hw)
        keys = {"stem": k, "all_frame": frames * hw}.get(mode, hw)
        total += len(rec["self"]) * frames * heads * hw * keys * 2
        if mode == "stem":
            total += len(rec["self"]) * frames * hw * k * 4
        cross_steps = set(rec["cross"]) | (set(rec["blend"]) if tuple(site) in blend_sites else set())
        total += len(cross_steps) * frames * heads * hw * TEXT_TOKENS * 2
    return total
