"""Tests for stem_core.attention: plain, 2-frame, all-frame and STEM self-attention."""

import pytest
import torch

from comfyui_stem.stem_core.attention import (
    all_frame_attention,
    attention,
    attention_with_probs,
    stem_attention,
    middle_frame_context,
)
from comfyui_stem.stem_core.em import estimate_bases

HEADS = 2


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def naive_attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, written out."""
    batch, lq, channels = q.shape
    d = channels // heads
    dv = v.shape[2] // heads
    outs = []
    for h in range(heads):
        qh, kh = q[..., h * d : (h + 1) * d], k[..., h * d : (h + 1) * d]
        vh = v[..., h * dv : (h + 1) * dv]
        probs = torch.softmax(qh @ kh.transpose(1, 2) / d**0.5, dim=-1)
        outs.append(probs @ vh)
    return torch.cat(outs, dim=-1)


def naive_all_frame(q, k, v, frames, heads):
    """Per frame: concatenate all frames of its group along tokens as keys/values."""
    outs = []
    for row in range(q.shape[0]):
        group = row // frames
        keys = torch.cat([k[group * frames + n] for n in range(frames)], dim=0)
        values = torch.cat([v[group * frames + n] for n in range(frames)], dim=0)
        outs.append(naive_attention(q[row : row + 1], keys[None], values[None], heads))
    return torch.cat(outs, dim=0)


def video_qkv(groups=2, frames=5, tokens=12, channels=8, seed=0):
    batch = groups * frames
    return (randn(batch, tokens, channels, seed=seed), randn(batch, tokens, channels, seed=seed + 1),
            randn(batch, tokens, channels, seed=seed + 2))


def test_attention_matches_naive_softmax():
    q, k, v = randn(3, 10, 8, seed=1), randn(3, 7, 8, seed=2), randn(3, 7, 6, seed=3)
    out = attention(q, k, v, HEADS)
    assert out.shape == (3, 10, 6)
    torch.testing.assert_close(out, naive_attention(q, k, v, HEADS), rtol=1e-7, atol=1e-7)
    q32, k32, v32 = q.float(), k.float(), v.float()
    torch.testing.assert_close(attention(q32, k32, v32, 1), naive_attention(q32, k32, v32, 1).float(),
                               rtol=1e-5, atol=1e-5)


def test_attention_with_probs():
    q, k, v = randn(3, 10, 8, seed=1), randn(3, 7, 8, seed=2), randn(3, 7, 8, seed=3)
    out, probs = attention_with_probs(q, k, v, HEADS)
    assert probs.shape == (3, HEADS, 10, 7)
    assert bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(3, HEADS, 10, dtype=torch.float64))
    torch.testing.assert_close(out, attention(q, k, v, HEADS), rtol=1e-7, atol=1e-7)
    # probs really are the maps that produced out: head 1 recombines v's second half.
    torch.testing.assert_close(out[..., 4:], probs[:, 1] @ v[..., 4:])
    out16, probs16 = attention_with_probs(q.half(), k.half(), v.half(), HEADS)
    assert out16.dtype == probs16.dtype == torch.float16
    torch.testing.assert_close(out16.double(), out, rtol=1e-2, atol=1e-2)


def test_middle_frame_context_definition():
    groups, frames = 2, 4
    kv = randn(groups * frames, 3, 4)
    context = middle_frame_context(kv, frames)
    assert context.shape == (groups * frames, 3, 4)
    for g in range(groups):
        for n in range(frames):
            assert torch.equal(context[g * frames + n], kv[g * frames + (frames - 1) // 2])


@pytest.mark.parametrize("frame_chunk", [None, 1, 2, 3, 5, 9])
def test_all_frame_attention_matches_naive(frame_chunk):
    q, k, v = video_qkv()
    out = all_frame_attention(q, k, v, frames=5, heads=HEADS, frame_chunk=frame_chunk)
    assert out.shape == q.shape
    torch.testing.assert_close(out, naive_all_frame(q, k, v, 5, HEADS), rtol=1e-5, atol=1e-5)


def test_all_frame_attention_fp32():
    q, k, v = (t.float() for t in video_qkv(seed=4))
    out = all_frame_attention(q, k, v, frames=5, heads=HEADS, frame_chunk=2)
    torch.testing.assert_close(out, naive_all_frame(q, k, v, 5, HEADS), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stem_with_all_tokens_as_bases_equals_all_frame_attention(dtype):
    """mu = X (K = M, no EM iteration): STEM-SA is exactly extended attention over all frames."""
    groups, frames, tokens, channels = 2, 4, 9, 8
    q, k, v = (t.to(dtype) for t in video_qkv(groups, frames, tokens, channels, seed=7))
    k_bases = k.reshape(groups, frames * tokens, channels)
    v_bases = v.reshape(groups, frames * tokens, channels)
    stem = stem_attention(q, k_bases, v_bases, frames=frames, heads=HEADS)
    extended = all_frame_attention(q, k, v, frames=frames, heads=HEADS)
    torch.testing.assert_close(stem, extended, rtol=1e-5, atol=1e-5)


def test_stem_with_em_bases_all_tokens_iterations_zero():
    """Same degenerate case through the EM code: K = M with zero iterations returns the tokens
    themselves (in a random order, which attention does not care about)."""
    groups, frames, tokens, channels = 2, 3, 6, 8
    q, k, v = video_qkv(groups, frames, tokens, channels, seed=2)
    kv = torch.cat([k, v], dim=-1).reshape(groups, frames * tokens, 2 * channels)
    bases = estimate_bases(kv, num_bases=frames * tokens, iterations=0).bases
    stem = stem_attention(q, bases[..., :channels], bases[..., channels:], frames=frames, heads=HEADS)
    torch.testing.assert_close(stem, naive_all_frame(q, k, v, frames, HEADS), rtol=1e-5, atol=1e-5)


def test_stem_attention_matches_per_frame_reference():
    groups, frames, tokens, channels, num_bases = 2, 3, 10, 8, 4
    q = randn(groups * frames, tokens, channels, seed=1)
    k_bases, v_bases = randn(groups, num_bases, channels, seed=2), randn(groups, num_bases, 6, seed=3)
    out = stem_attention(q, k_bases, v_bases, frames=frames, heads=HEADS)
    assert out.shape == (groups * frames, tokens, 6)
    for row in range(groups * frames):
        g = row // frames
        expected = naive_attention(q[row : row + 1], k_bases[g : g + 1], v_bases[g : g + 1], HEADS)
        torch.testing.assert_close(out[row : row + 1], expected, rtol=1e-7, atol=1e-7)


def test_validation_errors():
    q, k, v = video_qkv(groups=2, frames=5)
    with pytest.raises(ValueError, match="multiple of frames"):
        all_frame_attention(q, k, v, frames=3, heads=HEADS)
    with pytest.raises(ValueError, match="multiple of frames"):
        middle_frame_context(k, frames=4)
    with pytest.raises(ValueError, match="multiple of frames"):
        stem_attention(q, k[:2], v[:2], frames=3, heads=HEADS)
    with pytest.raises(ValueError, match="k_bases"):
        stem_attention(q, randn(3, 4, 8), randn(3, 4, 8), frames=5, heads=HEADS)
    with pytest.raises(ValueError, match="divisible by heads"):
        attention(q, k, v, heads=3)
    with pytest.raises(ValueError, match="same batch"):
        attention(q, k[:4], v[:4], heads=HEADS)
    with pytest.raises(ValueError, match="frames"):
        middle_frame_context(k, frames=0)
    with pytest.raises(ValueError, match="frame_chunk"):
        all_frame_attention(q, k, v, frames=5, heads=HEADS, frame_chunk=0)


def test_two_frame_reference():
    """The two_frame baseline is FateZero's spatio-temporal attention as its code runs it (zero-shot configs:
    SparseCausalAttention_index ['mid'], least_sc_channel 640): every frame's keys and values come from the MIDDLE
    frame (N - 1) // 2 only, at the layers at least 640 channels wide; the 320-wide layers stay per-frame."""
    from comfyui_stem.stem_core.attention import VideoAttentionPatch, VideoAttentionSettings
    torch.manual_seed(0)
    frames, tokens, heads, d = 4, 6, 2, 4
    q, k, v = (torch.randn(frames, tokens, heads * d) for _ in range(3))
    patch = VideoAttentionPatch(VideoAttentionSettings(mode="two_frame"))
    middle = (frames - 1) // 2
    for site, temporal in ((("input", 4), True), (("output", 3), True), (("input", 1), False), (("output", 11), False)):
        eo = {"block": site, "n_heads": heads, "cond_or_uncond": [0], "stem_video_frames": frames}
        out = patch.replace_for(site)(q, k, v, eo)
        if temporal:
            km, vm = k[middle:middle + 1].expand_as(k), v[middle:middle + 1].expand_as(v)
            expected = attention(q, km, vm, heads)
        else:
            expected = attention(q, k, v, heads)
        assert torch.allclose(out, expected, atol=1e-6), (site, float((out - expected).abs().max()))
