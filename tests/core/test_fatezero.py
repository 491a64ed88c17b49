"""stem_core.fatezero without ComfyUI: store, word alignment, fusion maths, blend mask, step windows,
and the recording / fusion callables driven with hand-made extra_options."""
import math
import os

import pytest
import torch

from comfyui_stem.stem_core import attention as attn
from comfyui_stem.stem_core import fatezero as fz
from comfyui_stem.stem_core.em import e_step, estimate_bases
from comfyui_stem.stem_core.errors import STEMError
from comfyui_stem.stem_core.sites import LAYER_GROUPS, parse_layers


# ---------------------------------------------------------------------------------------------- windows

def test_step_windows_follow_the_paper_convention():
    # STEM paper supplement D: cross over t in [0.2T, T] -> the first 80% of denoising steps
    assert fz.fused_steps(0.8, 50) == 40
    assert fz.fused_steps(0.5, 50) == 25
    assert fz.fused_steps(0.0, 50) == 0 and fz.fused_steps(1.0, 50) == 50
    assert fz.fused_steps(0.7, 10) == 7  # no float truncation to 6
    # editing step 0 (noisiest) reads the last inversion step
    assert fz.store_step(0, 50) == 49 and fz.store_step(49, 50) == 0
    active = [j for j in range(50) if fz.latent_blend_active(j, 50)]
    assert active[0] == 10 and active[-1] == 38  # FateZero: 10 < j + 1 < 40
    with pytest.raises(STEMError):
        fz.fused_steps(1.5, 10)


def test_store_layers():
    assert parse_layers("fatezero") == LAYER_GROUPS["fatezero"] and len(LAYER_GROUPS["fatezero"]) == 11
    assert len(parse_layers("all")) == 16
    assert parse_layers("output_3, input_7") == (("input", 7), ("output", 3))
    with pytest.raises(STEMError, match="fatezero"):
        parse_layers("nope")


# ---------------------------------------------------------------------------------------------- store

@pytest.mark.parametrize("spill", [False, True])
def test_store_roundtrip_size_and_free(tmp_path, spill):
    store = fz.AttentionStore(2, 3, folder=str(tmp_path) if spill else None)
    a = torch.rand(3, 8, 16, 77)
    store.put(0, "cross", ("input", 7), a)
    store.put(1, "cross", ("input", 7), a * 0.5)
    store.put(0, "self", ("input", 7), torch.rand(3, 8, 16, 4))
    assert store.nbytes() == (2 * a.numel() + 3 * 8 * 16 * 4) * 2  # float16
    assert store.nbytes("self") == 3 * 8 * 16 * 4 * 2
    assert torch.allclose(store.get(1, "cross", ("input", 7)), a * 0.5, atol=1e-3)
    assert store.sites("cross") == (("input", 7),)
    assert store.missing_entries() == ["self:input_7"]  # step 1 of the self map is missing
    folder = store.folder
    if spill:
        assert len(os.listdir(folder)) == 3
    store.free()
    assert store.freed
    if spill:
        assert not os.path.exists(folder)
    with pytest.raises(STEMError, match="freed"):
        store.get(0, "cross", ("input", 7))


def test_spilled_store_is_deleted_when_collected(tmp_path):
    store = fz.AttentionStore(1, 1, folder=str(tmp_path))
    store.put(0, "cross", ("middle", 0), torch.rand(1, 1, 4, 77))
    folder = store.folder
    del store
    import gc
    gc.collect()
    assert not os.path.exists(folder)


# ---------------------------------------------------------------------------------------------- alignment

def _source_of(al):
    """For each target position, the source position it reads (-1 where it keeps its own map)."""
    return [int(al.matrix[:, t].argmax()) if float(al.alphas[t]) > 0 else -1 for t in range(al.matrix.shape[1])]


def test_alignment_replace_for_the_same_number_of_words():
    al = fz.align_prompts([[10], [11], [12]], [[10], [99], [12]])
    assert al.mode == "replace"
    assert torch.equal(al.matrix, torch.eye(77)) and bool((al.alphas == 1).all())
    # a replaced word with another token count spreads 1/T of the source word's map over its T tokens
    al = fz.align_prompts([[1], [2], [3]], [[1], [5, 6], [3]])
    assert al.mode == "replace"
    assert al.matrix[2, 2] == al.matrix[2, 3] == 0.5 and float(al.matrix[:, 2].sum()) == 0.5
    assert _source_of(al)[:6] == [0, 1, 2, 2, 3, 4]  # the last word and the end token keep their own pairing
    al = fz.align_prompts([[1], [5, 6], [3]], [[1], [2], [3]])
    assert al.matrix[2, 2] == al.matrix[3, 2] == 1.0 and _source_of(al)[:5] == [0, 1, 2, 4, 5]


def test_alignment_refine_for_another_number_of_words():
    # source "a cat on mat" -> target "a big cat on red mat"
    al = fz.align_prompts([[1], [2], [3], [4]], [[1], [7], [2], [3], [8], [4]])
    assert al.mode == "refine"
    # start token, content, end token: inserted words keep their own maps (alpha 0)
    assert _source_of(al)[:8] == [0, 1, -1, 2, 3, -1, 4, 5]
    assert _source_of(al)[8:] == list(range(8, 77))  # padding maps to itself, as prompt-to-prompt does
    # "tiger" vs "golden retriever" is refine (another number of words), even though tokens differ either way
    assert fz.align_prompts([[1], [20], [3]], [[1], [21], [22], [3]]).mode == "refine"


def test_global_alignment_tie_break():
    """prompt-to-prompt's order on ties: target insertion, then source deletion, then the diagonal."""
    assert fz.global_alignment([1, 2, 3], [1, 3]) == [0, 2]
    assert fz.global_alignment([1, 2], [2, 1]) in ([-1, 0], [1, -1])
    assert fz.global_alignment([5, 5], [5]) == [0]  # a source deletion wins the tie at the end


def test_find_word_and_parsers():
    assert fz.find_word([5, 6, 7, 6, 7], [6, 7]) == [2, 3, 4, 5]
    assert fz.find_word([5, 6], [9]) == []
    assert fz.parse_words("red car, hat ,") == ["red car", "hat"]
    assert fz.parse_reweight("red:2, big hat:0.5") == [("red", 2.0), ("big hat", 0.5)]
    for bad in ("red", "red:x", "red:-1", ":2"):
        with pytest.raises(STEMError):
            fz.parse_reweight(bad)
    eq = fz.equalizer({3: 2.0})
    assert eq.shape == (77,) and eq[3] == 2 and eq.sum() == 78
    assert fz.equalizer({}) is None


# ---------------------------------------------------------------------------------------------- fusion maths

def test_fuse_cross_replace_refine_and_reweight():
    p_src = torch.rand(2, 4, 9, 77).softmax(-1)
    p_tgt = torch.rand(2, 4, 9, 77).softmax(-1)
    rep = fz.align_prompts([[1], [2]], [[1], [3]])
    assert torch.equal(fz.fuse_cross(p_src, p_tgt, rep, 1.0), p_src)
    assert torch.equal(fz.fuse_cross(p_src, p_tgt, rep, 0.0), p_tgt)
    ref = fz.align_prompts([[1], [2]], [[1], [5], [2]])
    out = fz.fuse_cross(p_src, p_tgt, ref, 1.0)
    assert torch.equal(out[..., 2], p_tgt[..., 2])      # the new word keeps its own map
    assert torch.equal(out[..., 3], p_src[..., 2])      # the shared word takes the source's
    eq = fz.equalizer({1: 3.0})
    assert torch.allclose(fz.fuse_cross(p_src, p_tgt, rep, 0.0, eq)[..., 1], 3 * p_tgt[..., 1])


def test_blend_outputs_mask():
    own, src = torch.rand(2, 4, 5), torch.rand(2, 4, 5)
    assert torch.equal(fz.blend_outputs(own, src, None), src)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0]])
    out = fz.blend_outputs(own, src, mask)
    assert torch.equal(out[0, 0], own[0, 0]) and torch.equal(out[0, 1], src[0, 1])
    assert torch.equal(out[1], src[1])


def test_blend_mask_thresholds_and_shape():
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(3, 8, 16, 77, generator=g) * 0.1, torch.rand(3, 8, 64, 77, generator=g) * 0.1]
    maps[1].view(3, 8, 8, 8, 77)[:, :, :3, :3, 2] += 1.0  # the word attends to a top-left region
    words = fz.word_attention(maps, [2, 3], latent_hw=(16, 16))
    assert words.shape == (3, 8, 8)  # the finest grid of the two layers
    norm = fz.normalised_blend_map(words, (32, 24))
    assert norm.shape == (3, 32, 24)
    assert torch.allclose(norm.flatten(1).amax(1), torch.ones(3))
    assert fz.blend_mask(words, (32, 24), 1.0).sum() == 0                       # above the maximum
    below = float(norm.min()) - 1e-3
    assert bool((fz.blend_mask(words, (32, 24), below) == 1).all())             # below the minimum
    mid = fz.blend_mask(words, (32, 24), 0.8)
    assert 0 < float(mid.mean()) < 1 and mid.shape == (3, 32, 24)


def test_layer_hw():
    assert fz.layer_hw(64 * 48, (64, 48)) == (64, 48)
    assert fz.layer_hw(16 * 12, (64, 48)) == (16, 12)
    assert fz.layer_hw(4, (5, 5)) == (2, 2)  # odd latents round up like the UNet
    with pytest.raises(STEMError):
        fz.layer_hw(7, (8, 8))


def test_target_bases_from_source_responsibilities():
    """With K = M and tau -> 0 the responsibilities are the identity: the rebuilt bases are the target's
    own tokens, so P_src (mu_tgt W_V) is FateZero's all-frame P_src V_tgt."""
    g = torch.Generator().manual_seed(1)
    x_src = torch.nn.functional.normalize(torch.randn(1, 12, 6, generator=g), dim=-1)
    x_tgt = x_src + 0.1 * torch.randn(1, 12, 6, generator=g)
    z = e_step(x_src, x_src, 1e-3)  # bases = (unit-norm) tokens: each token owns its own basis
    mu = fz.bases_from_responsibilities(x_tgt, z, x_src)
    assert torch.allclose(mu, x_tgt, atol=1e-4)


# ---------------------------------------------------------------------------------------------- callables

def _eo(site, sigma, frames, groups=(0,), heads=2):
    return {"block": site, "n_heads": heads, "sigmas": torch.tensor([sigma]), "cond_or_uncond": list(groups),
            "stem_video_frames": frames}


def test_record_then_fuse_with_identical_inputs_is_identity():
    """Recording q,k,v at inversion step s and fusing the same q,k,v at the editing step that reads s
    gives back plain attention (self: P_src = P_tgt; cross: replace with the identity alignment)."""
    torch.manual_seed(0)
    frames, tokens, heads, d = 2, 16, 2, 4
    site = ("input", 7)
    inv_sigmas = torch.tensor([0.0, 1.0, 5.0, 14.0])      # steps = 3; step i evaluates the model at inv_sigmas[i + 1]
    samp_sigmas = torch.tensor([14.0, 5.0, 1.0, 0.0])
    rec = fz.AttentionStoreWriter([site], {site: "two_frame"}, self_fraction=1.0, cross_fraction=1.0)
    rec.begin_inversion(frames, inv_sigmas)
    q, k, v = (torch.randn(frames, tokens, heads * d) for _ in range(3))
    ctx_k = torch.randn(frames, 77, heads * d)
    for step, s in enumerate(inv_sigmas[1:].tolist()):
        out = rec.self_replace(site)(q, k, v, _eo(site, s, frames))
        two = attn.attention(q, attn.middle_frame_context(k, frames), attn.middle_frame_context(v, frames), heads)
        assert torch.allclose(out, two, atol=1e-5)
        rec.cross_replace(site)(q, ctx_k, ctx_k, _eo(site, s, frames))

    class Traj:
        extras = {}

    rec.finish_inversion(Traj)
    store = Traj.extras["attention_store"]
    assert rec.store is None and store.steps == 3
    assert store.shape(0, "self", site) == (frames, heads, tokens, tokens)  # each frame reads the middle frame
    settings = fz.FusionSettings(fz.align_prompts([[1]], [[2]]), cross_steps=3, self_steps=3)
    fusion = fz.FusionPatches(store, settings, samp_sigmas[:-1], (4, 4), {site: "two_frame"})
    # editing step 1 (sigma 5) reads inversion step 1 (sigma 1.0 -> 5.0 interval)
    eo = _eo(site, 5.0, frames, groups=(1, 0))
    q2, k2, v2 = (torch.cat([t, t]) for t in (q, k, v))
    out = fusion.self_replace(site)(q2, k2, v2, eo)
    ref = attn.attention(q2, attn.middle_frame_context(k2, frames), attn.middle_frame_context(v2, frames), heads)
    assert torch.allclose(out, ref, atol=2e-3)  # float16 storage
    c2 = torch.cat([ctx_k, ctx_k])
    assert torch.allclose(fusion.cross_replace(site)(q2, c2, c2, eo), attn.attention(q2, c2, c2, heads), atol=2e-3)
    fusion.release()
    assert fusion.store is None


def test_stem_responsibilities_are_recorded_and_reused():
    torch.manual_seed(0)
    frames, tokens, c, kb = 2, 8, 6, 4
    site = ("output", 3)
    rec = fz.AttentionStoreWriter([site], {site: "stem"}, tau=0.05, self_fraction=1.0)
    rec.begin_inversion(frames, torch.tensor([0.0, 2.0]))
    n = torch.randn(frames, tokens, c)
    result = estimate_bases(n.reshape(1, -1, c), kb, 3, 0.05, return_responsibilities=True)
    mu = result.bases
    ctx = mu.expand(frames, kb, c)
    eo = dict(_eo(site, 2.0, frames), stem_responsibilities=result.responsibilities)
    assert rec(n, ctx, ctx, eo)[1] is ctx
    assert rec.store.shape(0, "resp", site) == (frames * tokens, kb)
    assert rec(n, n, n, _eo(site, 2.0, frames))[1] is n  # no STEM bases here: nothing recorded anew
    store = rec.store
    settings = fz.FusionSettings(fz.align_prompts([[1]], [[1]]), cross_steps=1, self_steps=1)
    fusion = fz.FusionPatches(store, settings, torch.tensor([2.0]), (4, 2), {site: "stem"})
    _, ctx2, val2 = fusion(n, ctx, ctx, _eo(site, 2.0, frames))
    # same features as the source: the rebuilt bases are the source's M-step of its own E-step
    assert torch.allclose(ctx2[0, :kb], mu[0], atol=1e-5) and torch.equal(ctx2[0, kb:], ctx[0]) and ctx2 is val2
    assert not math.isnan(float(ctx2.sum()))
    rec.abort_inversion()
    assert store.freed and rec.store is None


def test_fatezero_store_pairing():
    """The map recorded at the UNet call of inversion step i is read by the editing step that evaluates the model at
    the same sigma: editing step j (at sampling_sigmas[j]) reads store step N-1-j, recorded at sampling_sigmas[j]."""
    from comfyui_stem.stem_core.inversion import invert_video
    from tests.core.oracles import GaussianDataDenoiser, ddim_uniform_sigmas, scaled_linear_sigmas

    sampling = ddim_uniform_sigmas(scaled_linear_sigmas(), 10)
    steps = len(sampling) - 1
    site = ("input", 4)
    writer = fz.AttentionStoreWriter([site], {site: "per_frame"})
    recorded = {}  # store step -> sigma of the model call that wrote it
    oracle = GaussianDataDenoiser(0.0, 1.0)

    class Hook:  # the writer's step bookkeeping, without requiring maps at the end
        begin_inversion = writer.begin_inversion

        def finish_inversion(self, trajectory):
            pass

        def abort_inversion(self):
            pass

    def denoise(x, sigma):
        recorded[writer._step({"sigmas": torch.tensor([float(sigma)])})] = float(sigma)
        return oracle(x, sigma)

    invert_video(lambda loop, sigmas, latent: loop(denoise, latent, sigmas), torch.randn(2, 4, 8, 8), sampling,
                 1.0, hooks=[Hook()])
    assert sorted(recorded) == list(range(steps)), recorded
    fusion = fz.FusionPatches(writer.store, fz.FusionSettings(fz.align_prompts([[1]], [[1]]), steps, steps),
                              sampling[:-1], (8, 8))
    for j in range(steps):
        sigma_j = float(sampling[j])
        assert fusion.step_of({"sigmas": torch.tensor([sigma_j])}) == j
        assert recorded[fz.store_step(j, steps)] == pytest.approx(sigma_j, rel=1e-6), (j, recorded)


def test_fatezero_store_identity():
    """The store keeps the responsibilities of the LAST E-step, the one whose M-step produced the bases the layer
    used: at the first editing step the bases the edit rebuilds from the stored Z on the SOURCE features are the
    inversion's bases at that sigma (max abs diff < 1e-5)."""
    from comfyui_stem.stem_core.attention import VideoAttentionPatch, VideoAttentionSettings
    torch.manual_seed(0)
    frames, tokens, c, k = 3, 16, 8, 6
    site, sigma = ("input", 4), 2.0
    patch = VideoAttentionPatch(VideoAttentionSettings(num_bases=k, iterations=3, layers=(site,)))
    writer = fz.AttentionStoreWriter([site], {site: "stem"}, tau=0.05, self_fraction=1.0, cross_fraction=1.0)
    writer.begin_inversion(frames, torch.tensor([0.0, sigma]))
    n = torch.randn(frames, tokens, c) + torch.randn(1, 1, c) * 3  # clustered-ish features
    eo = dict(_eo(site, sigma, frames), stem_record_responsibilities=(site,))
    _, mu, _ = patch(n, n, n, eo)
    writer(n, mu, mu, eo)
    fusion = fz.FusionPatches(writer.store, fz.FusionSettings(fz.align_prompts([[1]], [[1]]), 1, 1),
                              torch.tensor([sigma]), (4, 4), {site: "stem"})
    _, context, _ = fusion(n, mu, mu, dict(_eo(site, sigma, frames)))
    rebuilt = context[:, :k]  # the fusion hands ComfyUI [rebuilt | own] bases
    diff = float((rebuilt[0] - mu[0]).abs().max())
    assert diff < 1e-5, f"bases rebuilt from the stored responsibilities differ from the inversion's by {diff}"


def test_fatezero_blend_outputs():
    """Inside the blend mask a row takes the TARGET branch's own attention OUTPUT, its own STEM-SA (its own EM
    bases) included; outside it, the stored source probabilities applied to the target's values. With a mask of
    ones everywhere the fused output is exactly the target's own unfused attention output."""
    from comfyui_stem.stem_core.attention import VideoAttentionPatch, VideoAttentionSettings
    torch.manual_seed(0)
    frames, tokens, c, heads, k = 2, 16, 8, 2, 4
    site, sigma = ("input", 7), 3.0
    wq, wk, wv = (torch.randn(c, c) / c ** 0.5 for _ in range(3))
    text = torch.randn(frames, 77, c)
    patch = VideoAttentionPatch(VideoAttentionSettings(num_bases=k, iterations=3, layers=(site,)))
    # inversion of the source: bases, responsibilities, self and cross maps recorded at sigma
    writer = fz.AttentionStoreWriter([site], {site: "stem"}, tau=0.05, self_fraction=1.0, cross_fraction=1.0)
    writer.begin_inversion(frames, torch.tensor([0.0, sigma]))
    n_src = torch.randn(frames, tokens, c)
    eo = dict(_eo(site, sigma, frames, heads=heads), stem_record_responsibilities=(site,))
    _, mu_src, _ = patch(n_src, n_src, n_src, eo)
    writer(n_src, mu_src, mu_src, eo)
    writer.self_replace(site)(n_src @ wq, mu_src @ wk, mu_src @ wv, eo)
    writer.cross_replace(site)(n_src @ wq, text @ wk, text @ wv, eo)
    # the edit: target features with its own bases; a blend mask of ones (threshold below every value)
    settings = fz.FusionSettings(fz.align_prompts([[1], [2]], [[1], [2]]), 1, 1, blend_positions=(1,), blend_threshold=-1.0)
    fusion = fz.FusionPatches(writer.store, settings, torch.tensor([sigma]), (16, 16), {site: "stem"})
    n_tgt = n_src + 0.5 * torch.randn(frames, tokens, c)
    patch.reset()
    eo_edit = _eo(site, sigma, frames, heads=heads)
    _, mu_own, _ = patch(n_tgt, n_tgt, n_tgt, eo_edit)
    _, ctx, val = fusion(n_tgt, mu_own, mu_own, eo_edit)
    out = fusion.self_replace(site)(n_tgt @ wq, ctx @ wk, val @ wv, eo_edit)
    own = attn.attention(n_tgt @ wq, mu_own @ wk, mu_own @ wv, heads)
    assert torch.allclose(out, own, atol=1e-5), float((out - own).abs().max())


def test_fatezero_reweight_window():
    """Equalizer reweighting applies only inside the cross-attention replace window (FateZero: outside it the
    blend weight of the fused map is 0 and the edit's own attention passes unchanged)."""
    torch.manual_seed(0)
    frames, tokens, heads, d = 2, 16, 2, 4
    site = ("input", 7)
    sigmas = torch.tensor([0.0, 1.0, 5.0])  # two steps; editing step 0 at 5.0, step 1 at 1.0
    writer = fz.AttentionStoreWriter([site], {site: "per_frame"}, cross_fraction=1.0)
    writer.begin_inversion(frames, sigmas)
    q, text = torch.randn(frames, tokens, heads * d), torch.randn(frames, 77, heads * d)
    for s in (1.0, 5.0):
        writer.cross_replace(site)(q, text, text, _eo(site, s, frames, heads=heads))
    settings = fz.FusionSettings(fz.align_prompts([[1], [2]], [[1], [2]]), cross_steps=1, self_steps=0,
                                 eq=fz.equalizer({1: 4.0}))
    fusion = fz.FusionPatches(writer.store, settings, torch.tensor([5.0, 1.0]), (4, 4))
    q2 = q + 0.3 * torch.randn_like(q)
    inside = fusion.cross_replace(site)(q2, text, text, _eo(site, 5.0, frames, heads=heads))
    outside = fusion.cross_replace(site)(q2, text, text, _eo(site, 1.0, frames, heads=heads))
    plain = attn.attention(q2, text, text, heads)
    assert not torch.allclose(inside, plain, atol=1e-4)  # inside the window: replaced and reweighted
    assert torch.allclose(outside, plain, atol=1e-6), float((outside - plain).abs().max())


def test_fatezero_latent_blend_union():
    """FateZero's latent blend keeps the edit inside the UNION of the source words' mask (from the stored source
    cross-attention) and the target words' mask (from the running sum of the edit's own, pre-fusion,
    cross-attention: spatial_blend.py SpatialBlender with prompt_choose 'both'). Here the source word attends to
    the left half and the target word to the right half: after a blending step neither half is reset to the
    source latent."""
    from comfyui_stem.stem_core.inversion import InversionTrajectory
    torch.manual_seed(0)
    frames, heads, d, steps = 2, 2, 4, 5
    site = ("input", 7)  # a 16x16-latent blend site: 4x4 tokens
    left = torch.zeros(4, 4)
    left[:, :2] = 1
    store = fz.AttentionStore(steps, frames)
    src_map = torch.full((frames, heads, 16, 77), 0.001)
    src_map[..., 1] += left.reshape(-1)[None, None] * 0.9       # source word (position 1) on the left half
    for i in range(steps):
        store.put(i, "cross", site, src_map)
    # the edit's text keys: position 2 (the target word) answers queries of the right half
    text = torch.zeros(frames, 77, heads * d)
    text[:, 2, 0] = 1.0
    q = torch.zeros(frames, 16, heads * d)
    q[:, (1 - left).reshape(-1).bool(), 0] = 20.0
    sampling = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.0])
    latents = [torch.zeros(frames, 4, 16, 16) for _ in range(steps + 1)]  # the source stays at 0
    traj = InversionTrajectory(latents=latents, inversion_sigmas=sampling.flip(0), sampling_sigmas=sampling,
                               latent_scale=1.0, mode="per_frame", settings={})
    settings = fz.FusionSettings(fz.align_prompts([[1], [2]], [[1], [3]]), cross_steps=steps, self_steps=0,
                                 blend_positions=(1,), target_blend_positions=(2,), blend_threshold=0.3)
    fusion = fz.FusionPatches(store, settings, sampling[:-1], (16, 16))
    seen = {}

    def denoise(x, sigma):
        seen[round(float(sigma), 3)] = x.clone()
        fusion.cross_replace(site)(q, text, text, _eo(site, float(sigma), frames, heads=heads))
        return torch.full_like(x, 5.0)  # the edit moves every pixel away from the source (0)

    fz.edit_loop(traj, fusion, latent_blend=True)(denoise, latents[-1].clone(), sampling)
    blended = seen[1.0]  # the state after editing step 2, a latent-blend step (0.2 * 5 < 3 < 0.8 * 5)
    assert float(blended[..., :, :8].abs().min()) > 0.1, "source-word region reset to the source"
    assert float(blended[..., :, 8:].abs().min()) > 0.1, "target-word region reset to the source"


def test_default_target_blend_words_are_the_edited_words():
    assert fz.differing_words("a wolf standing in the snow", "a marble wolf standing in the desert") == \
        ["marble", "desert"]
    assert fz.differing_words("a red car", "a red car") == []


def test_store_records_only_what_the_edit_reads():
    """memory.recorded_store_steps: editing step j reads store step N-1-j; self maps inside the self window, cross
    maps inside the cross window, blend-site cross maps in the self and latent-blend windows too."""
    from comfyui_stem.stem_core.memory import recorded_store_steps
    rec = recorded_store_steps(10, 0.5, 0.8, blend_masks=True)
    assert rec["self"] == [5, 6, 7, 8, 9] and rec["cross"] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert rec["blend"] == [3, 4, 5, 6, 7, 8, 9]  # editing steps 0..4 and the latent window j = 2..6
    assert recorded_store_steps(10, 0.5, 0.8, blend_masks=False)["blend"] == []
    site = ("input", 7)
    writer = fz.AttentionStoreWriter([site], {site: "per_frame"}, self_fraction=0.2, cross_fraction=0.0,
                                     blend_masks=False, available=lambda folder: 10 ** 12)
    writer.begin_inversion(2, torch.linspace(0.0, 5.0, 6), (16, 16))
    assert writer.records(4, "self", site) and not writer.records(2, "self", site)
    assert not writer.records(4, "cross", site)
    writer.abort_inversion()
