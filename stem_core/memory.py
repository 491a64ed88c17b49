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
from typing import Callable, Iterable, Mapping

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


# ------------------------------------------------------------------------------------------------------------
# video, trajectory, EM, attention, TokenFlow


def video_frames_bytes(frames: int, width: int, height: int) -> int:
    """Peak bytes of loading a clip: the float32 IMAGE [frames, height, width, 3] plus the uint8 frames the loader
    keeps until it converts them (video_io._Frames frees them as it converts, so this is the peak)."""
    return int(frames) * int(width) * int(height) * 3 * (4 + 1)


def trajectory_bytes(frames: int, latent_hw, steps: int, itemsize: int = 4) -> int:
    """The inversion trajectory: steps + 1 latents [frames, 4, h, w]."""
    h, w = latent_hw
    return (int(steps) + 1) * int(frames) * 4 * int(h) * int(w) * int(itemsize)


def em_chunk_tokens(groups: int, tokens: int, num_bases: int, chunk_tokens=None, itemsize: int = 4,
                    budget: int | None = None) -> int:
    """Tokens per EM chunk: all of them when the [groups, tokens, K] logits fit the budget, else what fits."""
    from .em import RESPONSIBILITY_BUDGET_BYTES
    if chunk_tokens:
        return min(int(chunk_tokens), tokens)
    per_token = groups * num_bases * itemsize
    budget = RESPONSIBILITY_BUDGET_BYTES if budget is None else budget
    return tokens if tokens * per_token <= budget else max(1, budget // per_token)


def em_working_set_bytes(groups: int, tokens: int, channels: int, num_bases: int, chunk_tokens=None,
                         itemsize: int = 4, keep_responsibilities: bool = False) -> int:
    """Peak bytes EM adds above its input x [groups, tokens, channels] at one layer: the E-step's logits for one
    chunk [groups, chunk, K] (reused across chunks and iterations), the row statistics, the M-step's sums and
    the bases [groups, K, C] (a few copies), the responsibilities [groups, tokens, K] when they are kept, and the
    BLAS workspace."""
    k = min(int(num_bases), int(tokens))
    chunk = em_chunk_tokens(groups, tokens, k, chunk_tokens, itemsize)
    logits = groups * chunk * k * itemsize
    row_stats = 3 * groups * chunk * itemsize
    bases = 4 * groups * k * channels * itemsize
    kept = groups * tokens * k * itemsize if keep_responsibilities else 0
    return logits + row_stats + bases + kept + BLAS_WORKSPACE


# The batched matmuls' packing buffers and the allocator's rounding: measured 10-11 MiB above the tensors on the
# project's CPU for EM at 16k-300k tokens (bench: tests/core/test_memory.py).
BLAS_WORKSPACE = 12 * 2**20


def attention_working_set_bytes(mode: str, frames: int, tokens: int, channels: int, num_bases: int = 256,
                                groups: int = 1, itemsize: int = 4, frame_chunk: int = 4) -> int:
    """Peak bytes one self-attention layer adds above its projected inputs q, k, v [groups*frames, L, C], by mode:
    the output [groups*frames, L, C], plus per mode the keys/values each frame reads when they are materialised
    (stem: the K bases copied and projected for every frame, as ComfyUI projects the context it is given;
    two_frame reads the middle frame through a view), all_frame's chunked outputs and their concatenation, and
    the flash attention's per-thread blocks (:func:`sdpa_workspace_bytes`; the score matrix is never
    materialised)."""
    b = groups * frames
    out = b * tokens * channels * itemsize
    workspace = sdpa_workspace_bytes()
    if mode == "stem":
        k = min(int(num_bases), frames * tokens)
        return out + 3 * b * k * channels * itemsize + workspace
    if mode == "all_frame":  # the query chunks' outputs and their concatenation
        return 2 * out + workspace
    return out + workspace  # per_frame; two_frame reads the middle frame through a stride-0 view


def sdpa_workspace_bytes(threads: int | None = None) -> int:
    """PyTorch's CPU flash attention keeps per-thread query/key blocks (measured ~2.5 MiB a thread), not the
    score matrix."""
    import torch
    return int(2.5 * 2**20) * (threads or torch.get_num_threads())


def tokenflow_store_bytes(frames: int, latent_hw, chunk_size: int, groups: int = 3, channels_scale: float = 1.0,
                          sites=(), itemsize: int = 4) -> int:
    """TokenFlow's per-step keyframe store: at every self-attention site the keyframes' source features (unit
    rows) [K, L, C] and all groups' attention outputs [groups, K, L, C], K = ceil(frames / chunk_size).
    ``channels_scale`` scales SD1.5's widths (32 / 320 for the tiny test model)."""
    h, w = latent_hw
    keyframes = -(-int(frames) // int(chunk_size))
    total = 0
    for site in sites:
        info = site_info(site)
        c = int(round(info.channels * channels_scale))
        total += (1 + groups) * keyframes * info.tokens(h, w) * c * itemsize
    return total


def unet_activation_bytes(batch: int, latent_hw, model_channels: int = 320, itemsize: int = 4) -> int:
    """Peak activations of one SD1.5-layout UNet call on ``batch`` latents of latent_hw: ~1900 values per latent
    token at 320 base channels (the skip connections kept for the decoder, the 2560-wide feed-forward of the
    top-level transformer blocks and the block's working tensors), scaled with the width, plus ~64 MiB of
    embeddings and cast weights. Measured on the project's CPU (fp32): full size 4 x 64x64 500 MiB (estimate
    562), 2 x 32x32 128 MiB (126); tiny model (32 channels) 32 x 64x64 402 MiB (462)."""
    h, w = latent_hw
    return int(batch * h * w * 1900 * (model_channels / 320.0) * itemsize) + 64 * 2**20


def sampling_bytes(frames: int, latent_hw, mode: str, num_bases: int, model_channels: int, groups: int = 1,
                   chunk_tokens=None, itemsize: int = 4) -> dict:
    """What one UNet call over the whole video adds, by part, at its largest (top-level) attention layer:
    {"unet": activations, "em": STEM's EM working set (stem only), "attention": the layer's attention}."""
    h, w = latent_hw
    tokens = h * w
    parts = {"unet": unet_activation_bytes(groups * frames, latent_hw, model_channels, itemsize),
             "attention": attention_working_set_bytes(mode, frames, tokens, model_channels, num_bases, groups,
                                                      itemsize)}
    if mode == "stem":
        parts["em"] = em_working_set_bytes(groups, frames * tokens, model_channels, num_bases, chunk_tokens, itemsize)
    return parts


def describe_parts(parts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {gb(n)}" for name, n in parts.items())
