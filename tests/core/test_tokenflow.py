"""stem_core.tokenflow: keyframes, blend weights, nearest neighbours, propagation, hooks (no ComfyUI)."""
import math

import pytest
import torch

from comfyui_stem.stem_core.attention import all_frame_attention, attention
from comfyui_stem.stem_core.errors import STEMError
from comfyui_stem.stem_core.sites import SD15_KEYS, TOKENFLOW_QK_SITES
from comfyui_stem.stem_core.tokenflow import (InjectionSchedule, ResidualInjection, TokenFlowHooks, blend_plan,
                                              chunk_count, injection_step_count, keyframe_schedule, nearest_neighbors,
                                              propagate, select_keyframes)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------------
# keyframe selection


@pytest.mark.parametrize("frames,chunk", [(16, 8), (19, 8), (5, 8), (7, 1), (10, 3)])
def test_one_keyframe_per_chunk_inside_its_chunk(frames, chunk):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        kf = select_keyframes(frames, chunk, g)
        assert kf.dtype == torch.long and kf.numel() == chunk_count(frames, chunk) == math.ceil(frames / chunk)
        for c, f in enumerate(kf.tolist()):
            assert c * chunk <= f < min((c + 1) * chunk, frames)


def test_last_partial_chunk_is_covered_and_uniform():
    # 19 frames, chunk 8: chunks [0,8), [8,16), [16,19); the last draws among 16, 17, 18 only
    sched = keyframe_schedule(19, 8, 600, seed=3)
    assert sched.shape == (600, 3)
    last = sched[:, 2]
    assert set(last.tolist()) == {16, 17, 18}
    counts = torch.bincount(last - 16, minlength=3).double()
    assert (counts / 600 - 1 / 3).abs().max() < 0.08
    assert set(sched[:, 0].tolist()) == set(range(8))


def test_keyframes_deterministic_under_seed():
    a = keyframe_schedule(40, 8, 50, seed=7)
    b = keyframe_schedule(40, 8, 50, seed=7)
    c = keyframe_schedule(40, 8, 50, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # keyframes change from step to step (TokenFlow re-draws them at every step)
    assert len({tuple(r) for r in a.tolist()}) > 40


def test_keyframe_bad_arguments():
    with pytest.raises(STEMError, match="chunk_size"):
        select_keyframes(8, 0)
    with pytest.raises(STEMError, match="frames"):
        select_keyframes(0, 8)


# ---------------------------------------------------------------------------------------------------
# blend weights


def test_paper_blend_weights_match_formula():
    frames, chunk = 20, 8
    kf = [3, 10, 17]
    plan = blend_plan(frames, kf, chunk, "paper")
    for f in range(frames):
        first, second, w = int(plan.first[f]), int(plan.second[f]), float(plan.weight[f])
        if f <= 3:       # before (or at) the first keyframe: copy it
            assert (first, second, w) == (0, 0, 1.0)
        elif f >= 17:    # after (or at) the last keyframe
            assert (first, second, w) == (2, 2, 1.0)
        elif f in kf:
            assert kf[first] == f and w == 1.0
        else:
            p_prev, p_next = kf[first], kf[second]
            assert p_prev < f < p_next and second == first + 1
            assert w == pytest.approx((p_next - f) / (p_next - p_prev))
    # a frame in the middle of two keyframes takes both halves
    plan = blend_plan(16, [2, 12], 8, "paper")
    assert float(plan.weight[7]) == pytest.approx(0.5)
    assert float(plan.weight[4]) == pytest.approx(0.8)


def test_released_blend_weights_match_formula():
    frames, chunk = 24, 8
    kf = [1, 12, 20]
    plan = blend_plan(frames, kf, chunk, "released")
    for f in range(frames):
        c = f // chunk
        assert int(plan.first[f]) == c
        if c == 0:
            assert int(plan.second[f]) == 0 and float(plan.weight[f]) == 1.0
            continue
        assert int(plan.second[f]) == c - 1
        d_a = abs(f - (c * chunk + chunk // 2))
        d_b = abs(f - ((c - 1) * chunk + chunk // 2))
        assert float(plan.weight[f]) == pytest.approx(1 / (1 + math.exp(-d_b / (d_a + d_b))))
        assert 0.5 <= float(plan.weight[f]) <= 1 / (1 + math.exp(-1)) + 1e-12


def test_blend_plan_rejects_bad_keyframes():
    with pytest.raises(STEMError, match="expected 2 keyframes"):
        blend_plan(16, [3], 8)
    with pytest.raises(STEMError, match="outside"):
        blend_plan(16, [3, 5], 8)
    with pytest.raises(STEMError, match="blend mode"):
        blend_plan(16, [3, 9], 8, "nearest")


# ---------------------------------------------------------------------------------------------------
# nearest neighbours and propagation


def test_nearest_neighbors_is_cosine_argmax():
    q = randn(3, 10, 6, seed=1)
    keys = randn(2, 7, 6, seed=2)
    key_index = torch.tensor([1, 0, 1])
    idx = nearest_neighbors(q, keys, key_index, block=4)
    for f in range(3):
        k = keys[key_index[f]]
        cos = torch.nn.functional.cosine_similarity(q[f][:, None], k[None], dim=-1)
        assert torch.equal(idx[f], cos.argmax(-1))
    # scaling a key does not change cosine matches
    scaled = keys.clone()
    scaled[1] *= 5.0
    assert torch.equal(nearest_neighbors(q, scaled, key_index), idx)


def test_identical_frames_propagate_exactly():
    """Every frame is the keyframe's content: NN is the identity and the output is the keyframe's."""
    tokens, channels, dim = 12, 8, 5
    kf_feat = randn(1, tokens, channels, seed=3)
    kf_out = randn(3, 1, tokens, dim, seed=4)       # [groups, K, L, D]
    frames = kf_feat.expand(4, tokens, channels)
    slots = torch.zeros(4, dtype=torch.long)
    idx = nearest_neighbors(frames, kf_feat, slots)
    assert torch.equal(idx, torch.arange(tokens).expand(4, tokens))
    out = propagate(kf_out, slots, slots, torch.ones(4), idx, idx)
    assert out.shape == (3, 4, tokens, dim)
    for f in range(4):
        assert torch.equal(out[:, f], kf_out[:, 0])


def test_frame_equal_to_keyframe_gets_that_keyframes_output():
    """A frame whose features equal keyframe 1's gets keyframe 1's output, also under a permutation
    of its tokens (the field follows content, not position) and with the other keyframe's weight 0."""
    tokens, channels, dim = 16, 8, 4
    kf_feat = randn(2, tokens, channels, seed=5)
    kf_out = randn(2, 2, tokens, dim, seed=6)
    perm = torch.randperm(tokens, generator=torch.Generator().manual_seed(0))
    frame = kf_feat[1, perm][None]
    first = torch.tensor([1])
    second = torch.tensor([0])
    idx1 = nearest_neighbors(frame, kf_feat, first)
    idx2 = nearest_neighbors(frame, kf_feat, second)
    assert torch.equal(idx1[0], perm)
    out = propagate(kf_out, first, second, torch.ones(1), idx1, idx2)
    torch.testing.assert_close(out[:, 0], kf_out[:, 1, perm], rtol=0, atol=0)


def test_propagate_blends_with_the_weights():
    tokens, dim = 6, 3
    kf_out = randn(2, 3, tokens, dim, seed=7)
    idx_a = torch.randint(0, tokens, (2, tokens), generator=torch.Generator().manual_seed(1))
    idx_b = torch.randint(0, tokens, (2, tokens), generator=torch.Generator().manual_seed(2))
    first, second = torch.tensor([0, 1]), torch.tensor([1, 2])
    w = torch.tensor([0.25, 0.7], dtype=torch.float64)
    out = propagate(kf_out, first, second, w, idx_a, idx_b)
    for f in range(2):
        expect = w[f] * kf_out[:, first[f], idx_a[f]] + (1 - w[f]) * kf_out[:, second[f], idx_b[f]]
        torch.testing.assert_close(out[:, f], expect)


# ---------------------------------------------------------------------------------------------------
# injection schedule


def test_injection_schedule_counts_like_tokenflow():
    assert injection_step_count(50, 0.8) == 40
    assert injection_step_count(50, 0.5) == 25
    assert injection_step_count(100, 0.29) == 29
    assert injection_step_count(10, 0.0) == 0 and injection_step_count(10, 1.0) == 10
    s = InjectionSchedule(10, 0.8, 0.5)
    assert [s.residual(i) for i in range(10)] == [True] * 8 + [False] * 2
    assert [s.qk(i) for i in range(10)] == [True] * 5 + [False] * 5
    with pytest.raises(STEMError):
        injection_step_count(10, 1.5)


def test_site_lists():
    assert len(SD15_KEYS) == 16
    assert TOKENFLOW_QK_SITES == tuple(("output", i) for i in range(4, 12))


# ---------------------------------------------------------------------------------------------------
# hooks, driven the way the UNet calls them


def _call_layer(hooks, site, n, q, k, v, heads=2):
    opts = {"block": site, "block_index": 0, "n_heads": heads}
    hooks(n, n, n, opts)
    return hooks.replace(site)(q, k, v, opts)


def test_hooks_keyframe_pass_extended_attention_and_qk_injection():
    hooks = TokenFlowHooks()
    hooks.start(3)
    kfs, tokens, ch = 2, 5, 4
    q, k, v = (randn(3 * kfs, tokens, ch, seed=s) for s in (10, 11, 12))
    feats = randn(3 * kfs, tokens, ch, seed=13)
    site = ("output", 6)  # a q/k injection site
    hooks.begin_step(inject_residual=False, inject_qk=True)
    hooks.begin_keyframes()
    out = _call_layer(hooks, site, feats, q, k, v)
    q_inj, k_inj = q.clone(), k.clone()
    q_inj[kfs:2 * kfs] = q_inj[2 * kfs:] = q[:kfs]
    k_inj[kfs:2 * kfs] = k_inj[2 * kfs:] = k[:kfs]
    torch.testing.assert_close(out[:kfs], attention(q[:kfs], k[:kfs], v[:kfs], 2))
    torch.testing.assert_close(out[kfs:], all_frame_attention(q_inj[kfs:], k_inj[kfs:], v[kfs:], kfs, 2))
    # a site without q/k injection keeps the edit branches' own queries and keys
    out2 = _call_layer(hooks, ("input", 1), feats, q, k, v)
    torch.testing.assert_close(out2[kfs:], all_frame_attention(q[kfs:], k[kfs:], v[kfs:], kfs, 2))
    hooks.finish()
    assert hooks.store_bytes() == 0 and not hooks.active


def test_hooks_propagation_uses_keyframe_outputs():
    hooks = TokenFlowHooks()
    hooks.start(2)
    tokens, ch = 6, 4
    site = ("middle", 0)
    kf_feats = randn(2 * 2, tokens, ch, seed=20)          # 2 keyframes x 2 groups
    q, k, v = (randn(4, tokens, ch, seed=s) for s in (21, 22, 23))
    hooks.begin_step(False, False)
    hooks.begin_keyframes()
    kf_out = _call_layer(hooks, site, kf_feats, q, k, v).reshape(2, 2, tokens, ch)
    # propagate to a frame whose source features equal keyframe 1's: it must get keyframe 1's output
    frame_feats = torch.cat([kf_feats[1:2], randn(1, tokens, ch, seed=24)])  # [source | edit] rows
    hooks.begin_propagation(torch.tensor([1]), torch.tensor([0]), torch.tensor([1.0]))
    qq, kk, vv = (randn(2, tokens, ch, seed=s) for s in (25, 26, 27))
    out = _call_layer(hooks, site, frame_feats, qq, kk, vv).reshape(2, 1, tokens, ch)
    torch.testing.assert_close(out[:, 0], kf_out[:, 1], rtol=0, atol=0)
    hooks.finish()


def test_hooks_inactive_are_plain_attention():
    hooks = TokenFlowHooks()
    q, k, v = (randn(3, 5, 4, seed=s) for s in (1, 2, 3))
    out = _call_layer(hooks, ("input", 1), q, q, k, v)
    torch.testing.assert_close(out, attention(q, k, v, 2))


def test_residual_injection_shares_layers_and_copies_source():
    inner = torch.nn.Sequential(torch.nn.GroupNorm(2, 4), torch.nn.SiLU(), torch.nn.Dropout(0.0),
                                torch.nn.Conv2d(4, 4, 3, padding=1))
    hooks = TokenFlowHooks()
    wrapped = hooks.residual_layers(inner)
    assert isinstance(wrapped, ResidualInjection)
    assert [k for k in wrapped.state_dict()] == [k for k in inner.state_dict()]
    assert wrapped[3].weight is inner[3].weight
    x = randn(6, 4, 5, 5, seed=9, dtype=torch.float32)
    with torch.no_grad():
        ref = inner(x)
        torch.testing.assert_close(wrapped(x), ref)      # inactive: pass-through
        hooks.start(3)
        hooks.begin_step(inject_residual=True, inject_qk=False)
        hooks.begin_keyframes()
        out = wrapped(x)
        for grp in range(3):
            torch.testing.assert_close(out[grp * 2:(grp + 1) * 2], ref[:2])
        hooks.begin_step(inject_residual=False, inject_qk=False)
        hooks.begin_keyframes()
        torch.testing.assert_close(wrapped(x), ref)
        hooks.finish()
