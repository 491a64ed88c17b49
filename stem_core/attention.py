"""Self-attention maths for STEM inversion and its baselines (no ComfyUI import).

Tensors follow ComfyUI's projected layout: q, k, v are [B, L, heads * d] (heads concatenated in the last
dim). Video batches are laid out frame-major per group: [groups * frames, L, D], i.e. row
``g * frames + n`` is frame n of group g (a group is for example the cond or uncond half of a batch).

Contexts (which keys/values each frame's queries see):
- 1-frame (plain 2D attention): :func:`attention` on the batch as is.
- 2-frame (FateZero): frame n attends to [frame n, middle frame]: :func:`two_frame_context`.
- all-frame extended attention: frame n attends to every frame of its group: :func:`all_frame_attention`.
- STEM-SA (paper Eq. 7): frame n attends to its group's K bases: :func:`stem_attention`.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "attention",
    "attention_with_probs",
    "two_frame_context",
    "all_frame_attention",
    "stem_attention",
]


# ----------------------------------------------------------------------------------------------------
# validation


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> None:
    _check_positive_int(heads, "heads")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D [batch, tokens, heads*dim_head], got shape {tuple(t.shape)}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(
            f"q, k, v must have the same batch size, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same number of tokens, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must have the same channel count, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    for name, t in (("q", q), ("v", v)):
        if t.shape[2] % heads != 0:
            raise ValueError(f"{name} channels ({t.shape[2]}) must be divisible by heads ({heads})")


def _groups_of(batch: int, frames, name: str) -> int:
    _check_positive_int(frames, "frames")
    if batch % frames != 0:
        raise ValueError(
            f"{name} batch size {batch} is not a multiple of frames={frames}; the attention patch must see "
            "all frames of every cond/uncond group (laid out frame-major) in one call"
        )
    return batch // frames


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, heads*d] -> [B, heads, L, d]"""
    b, l, c = t.shape
    return t.view(b, l, heads, c // heads).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[B, heads, L, d] -> [B, L, heads*d]"""
    b, h, l, d = t.shape
    return t.transpose(1, 2).reshape(b, l, h * d)


# ----------------------------------------------------------------------------------------------------
# plain attention


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax(q k^T / sqrt(d)) v with torch's fused scaled_dot_product_attention.

    q [B, Lq, heads*d], k [B, Lk, heads*d], v [B, Lk, heads*dv] -> [B, Lq, heads*dv].
    """
    _check_qkv(q, k, v, heads)
    out = F.scaled_dot_product_attention(_split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads))
    return _merge_heads(out)


def attention_with_probs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`attention` but also returns the attention probabilities (for an attention store).

    q [B, Lq, heads*d], k [B, Lk, heads*d], v [B, Lk, heads*dv] ->
    (out [B, Lq, heads*dv], probs [B, heads, Lq, Lk]), both in q.dtype; the softmax runs in float32
    (float64 stays float64) so fp16 scores cannot overflow.
    """
    _check_qkv(q, k, v, heads)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qh = _split_heads(q, heads).to(compute)
    kh = _split_heads(k, heads).to(compute)
    vh = _split_heads(v, heads).to(compute)
    scale = 1.0 / math.sqrt(qh.shape[-1])
    probs = torch.matmul(qh, kh.transpose(-1, -2)).mul_(scale).softmax(dim=-1)
    out = torch.matmul(probs, vh)
    return _merge_heads(out).to(q.dtype), probs.to(q.dtype)


# ----------------------------------------------------------------------------------------------------
# video contexts


def two_frame_context(kv: torch.Tensor, frames: int) -> torch.Tensor:
    """FateZero's spatio-temporal context: frame n sees [frame n, middle frame].

    kv [groups*frames, L, D] (projected k or v, frame-major per group) -> [groups*frames, 2L, D] where
    row g*frames+n is cat(kv[g*frames+n], kv[g*frames+frames//2]) along tokens. The middle frame is the
    0-based index frames // 2, as in FateZero's code (the paper writes Round[N/2]).
    """
    if kv.dim() != 3:
        raise ValueError(f"kv must be 3-D [groups*frames, tokens, channels], got shape {tuple(kv.shape)}")
    groups = _groups_of(kv.shape[0], frames, "kv")
    _, tokens, channels = kv.shape
    per_group = kv.view(groups, frames, tokens, channels)
    middle = per_group[:, frames // 2 : frames // 2 + 1].expand(groups, frames, tokens, channels)
    return torch.cat((per_group, middle), dim=2).reshape(groups * frames, 2 * tokens, channels)


def all_frame_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    frames: int,
    heads: int,
    frame_chunk: Optional[int] = None,
) -> torch.Tensor:
    """Extended attention: every frame's queries attend to the keys/values of ALL frames of its group.

    q [groups*frames, Lq, D], k [groups*frames, Lk, D], v [groups*frames, Lk, Dv] -> [groups*frames, Lq, Dv].
    Since all frames of a group share one key set, the group's queries are concatenated into one
    sequence [groups, frames*Lq, D] and the keys into [groups, frames*Lk, D] (a view, no per-frame copy
    of the keys). ``frame_chunk`` limits how many frames' queries go through SDPA at once, bounding the
    score matrix at [groups, heads, frame_chunk*Lq, frames*Lk] on backends that materialise it.
    """
    _check_qkv(q, k, v, heads)
    groups = _groups_of(q.shape[0], frames, "q")
    lq, lk = q.shape[1], k.shape[1]
    q_seq = q.reshape(groups, frames * lq, q.shape[2])
    k_seq = k.reshape(groups, frames * lk, k.shape[2])
    v_seq = v.reshape(groups, frames * lk, v.shape[2])
    if frame_chunk is not None:
        _check_positive_int(frame_chunk, "frame_chunk")
    if frame_chunk is None or frame_chunk >= frames:
        out = attention(q_seq, k_seq, v_seq, heads)
    else:
        step = frame_chunk * lq
        out = torch.cat(
            [attention(q_seq[:, start : start + step], k_seq, v_seq, heads) for start in range(0, frames * lq, step)],
            dim=1,
        )
    return out.reshape(groups * frames, lq, v.shape[2])


def stem_attention(
    q: torch.Tensor, k_bases: torch.Tensor, v_bases: torch.Tensor, frames: int, heads: int
) -> torch.Tensor:
    """STEM-SA (paper Eq. 7): each frame's queries attend to its group's projected bases.

    q [groups*frames, L, D], k_bases [groups, K, D] (= mu W_K), v_bases [groups, K, Dv] (= mu W_V)
    -> [groups*frames, L, Dv]. The bases are shared by all frames of a group, so the group's queries
    are run as one sequence [groups, frames*L, D] instead of copying the bases per frame.
    """
    if q.dim() != 3:
        raise ValueError(f"q must be 3-D [groups*frames, tokens, channels], got shape {tuple(q.shape)}")
    groups = _groups_of(q.shape[0], frames, "q")
    for name, t in (("k_bases", k_bases), ("v_bases", v_bases)):
        if t.dim() != 3 or t.shape[0] != groups:
            raise ValueError(
                f"{name} must be [groups, K, channels] with groups = q batch / frames = {groups}, "
                f"got shape {tuple(t.shape)}"
            )
    _, tokens, channels = q.shape
    out = attention(q.reshape(groups, frames * tokens, channels), k_bases, v_bases, heads)
    return out.reshape(groups * frames, tokens, v_bases.shape[2])
