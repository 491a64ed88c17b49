"""The STEM attention patch without ComfyUI: layer selection, whole-video grouping, the mu = X limit,
warm-start run boundaries and replayed bases."""
import pytest
import torch

from comfyui_stem.stem_core import attention as attn
from comfyui_stem.stem_core.attention import VideoAttentionPatch, VideoAttentionSettings, install_plan
from comfyui_stem.stem_core.errors import STEMError
from comfyui_stem.stem_core.sites import SD15_KEYS, parse_layers

HEADS = 2


def opts(site=("input", 1), groups=1, frames=None, sigma=1.0):
    o = {"block": site, "cond_or_uncond": list(range(groups)), "sigmas": torch.tensor([sigma]), "n_heads": HEADS}
    if frames is not None:
        o["stem_video_frames"] = frames
    return o


def test_parse_layers_groups_and_names():
    assert parse_layers("all") == SD15_KEYS
    assert len(parse_layers("decoder")) == 9 and len(parse_layers("encoder")) == 6
    assert parse_layers("output_11, input_1") == (("input", 1), ("output", 11))
    with pytest.raises(STEMError, match="unknown layer 'output_2'"):
        parse_layers("output_2")


def test_settings_validation_names_the_input():
    for bad, word in [({"num_bases": 0}, "num_bases"), ({"iterations": -1}, "iterations"),
                      ({"tau": float("nan")}, "tau"), ({"mode": "x"}, "attention_context")]:
        with pytest.raises(STEMError, match=word):
            VideoAttentionSettings(**bad).validated()


def test_mu_equal_x_reproduces_all_frame_attention():
    """K = every token, R = 0, token init: the bases are the video's tokens, so STEM-SA is all-frame attention."""
    torch.manual_seed(0)
    frames, tokens, c = 3, 5, 8
    n = torch.randn(frames, tokens, c, dtype=torch.float64)
    patch = VideoAttentionPatch(VideoAttentionSettings(num_bases=frames * tokens, iterations=0))
    _, mu, _ = patch(n, n, n, opts(frames=frames))
    wq, wk, wv = (torch.randn(c, c, dtype=torch.float64) for _ in range(3))
    stem = attn.attention(n @ wq, mu @ wk, mu @ wv, HEADS)
    full = attn.all_frame_attention(n @ wq, n @ wk, n @ wv, frames, HEADS)
    assert torch.allclose(stem, full, atol=1e-10)


def test_groups_get_their_own_bases_and_partial_videos_are_refused():
    frames, tokens, c = 2, 6, 4
    cond = torch.randn(frames, tokens, c)
    n = torch.cat([cond, cond + 100.0])  # uncond group far away from the cond group
    patch = VideoAttentionPatch(VideoAttentionSettings(num_bases=3, iterations=2))
    _, mu, _ = patch(n, n, n, opts(groups=2, frames=frames))
    assert mu.shape == (2 * frames, 3, c)
    assert mu[:frames].max() < 50 and mu[frames:].min() > 50
    one = cond[:1]
    with pytest.raises(STEMError, match="saw 1 frames in one call but the video has 2"):
        patch(one, one, one, opts(frames=frames))


def test_unselected_layers_are_untouched():
    n = torch.randn(2, 4, 4)
    patch = VideoAttentionPatch(VideoAttentionSettings(num_bases=2, layers=parse_layers("decoder")))
    assert patch(n, n, n, opts(site=("input", 1)))[1] is n


def test_warm_start_only_within_one_monotone_run():
    patch = VideoAttentionPatch(VideoAttentionSettings(num_bases=2, warm_start=True))
    key, bases = ("k",), torch.zeros(1, 2, 3)
    patch._remember(key, 1.0, bases)
    assert torch.equal(patch._warm_bases(key, 2.0), bases)  # second call fixes the direction (ascending)
    patch._remember(key, 2.0, bases)
    assert torch.equal(patch._warm_bases(key, 3.0), bases)  # same direction: warm
    assert patch._warm_bases(key, 0.5) is None      # sigma went back: a new run, cold start
    assert patch._warm_bases(key, 2.0) is None      # same sigma again: a new run


def test_replay_uses_the_nearest_recorded_sigma():
    patch = VideoAttentionPatch(VideoAttentionSettings(num_bases=2))
    site = ("input", 1)
    table = [(s, {site: torch.full((1, 2, 4), s)}) for s in (0.1, 1.0, 10.0)]
    patch.set_replay(table)
    n = torch.randn(2, 3, 4)
    _, mu, _ = patch(n, n, n, opts(site=site, sigma=1.2))
    assert torch.all(mu == 1.0)
    _, mu, _ = patch(n, n, n, opts(site=site, sigma=14.0))
    assert torch.all(mu == 10.0)


def test_deepcopy_gives_fresh_state_and_replaces_follow_the_copy():
    import copy
    patch, replaces = install_plan(VideoAttentionSettings(mode="two_frame"))
    patch.state.warm["x"] = (1.0, 0, torch.zeros(1))
    options = {"patch": patch, "replaces": replaces}
    clone = copy.deepcopy(options)
    assert clone["patch"] is not patch and clone["patch"].settings == patch.settings and not clone["patch"].state.warm
    assert all(r.patch is clone["patch"] for r in clone["replaces"].values())


def test_released_variant_settings():
    """variant = released is the authors' code: tau 0.01 and R 5 whatever the widgets say, EM per head on the
    projected keys of each consecutive 8-frame batch (the last batch shorter), each batch attending to its own
    bases; the paper variant can run its E-step on L2-normalised X and mu (normalize, off by default)."""
    from comfyui_stem.stem_core.attention import stem_attention
    from comfyui_stem.stem_core.em import estimate_bases, released_variant_bases
    torch.manual_seed(0)
    frames, tokens, heads, d, k = 10, 6, 2, 4, 5
    q, kk, v = (torch.randn(frames, tokens, heads * d) for _ in range(3))
    settings = VideoAttentionSettings(variant="released", num_bases=k, tau=0.05, iterations=3)
    assert (settings.effective_tau, settings.effective_iterations) == (0.01, 5)
    patch = VideoAttentionPatch(settings)
    out = patch.replace_for(("input", 1))(q, kk, v, dict(opts(frames=frames), n_heads=heads))

    def per_head(t, n):
        return t.reshape(1, n, tokens, heads, d).permute(0, 3, 1, 2, 4).reshape(heads, n * tokens, d)

    def merge(t):
        return t.reshape(1, heads, k, d).permute(0, 2, 1, 3).reshape(1, k, heads * d)

    expected = []
    for start in (0, 8):  # batches of 8 frames: [0, 8) and [8, 10)
        sl = slice(start, min(start + 8, frames))
        n = sl.stop - sl.start
        kb, vb = released_variant_bases(per_head(kk[sl], n), per_head(v[sl], n), k, 5, 0.01, seed=0)
        expected.append(stem_attention(q[sl], merge(kb), merge(vb), n, heads))
    assert torch.allclose(out, torch.cat(expected), atol=1e-5), float((out - torch.cat(expected)).abs().max())

    x = torch.randn(2, 32, 4) * (0.2 + 5 * torch.rand(2, 32, 1))  # tokens of very different norms
    normed = VideoAttentionPatch(VideoAttentionSettings(num_bases=6, normalize=True))
    _, mu, _ = normed(x, x, x, opts(frames=2))
    want = estimate_bases(x.reshape(1, -1, 4), 6, 3, 0.05, normalize=True).bases
    assert torch.allclose(mu[0], want[0], atol=1e-6)
    assert not torch.allclose(want, estimate_bases(x.reshape(1, -1, 4), 6, 3, 0.05).bases, atol=1e-2)
