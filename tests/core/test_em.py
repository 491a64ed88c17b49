"""Tests for stem_core.em: the EM basis estimation of STEM inversion (paper Eq. 8-11)."""

import math

import pytest
import torch
import torch.nn.functional as F

from comfyui_stem.stem_core import em
from comfyui_stem.stem_core.em import EMResult, STEMError, e_step, estimate_bases, m_step, released_variant_bases


def random_features(groups=2, tokens=300, channels=16, seed=0, scale=1.0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(groups, tokens, channels, generator=generator) * scale).to(dtype)


def clustered_features(clusters=20, tokens=8192, channels=320, spread=0.01, seed=0, groups=1):
    """Tight clusters, as real video features are: the case that broke the unguarded M-step."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(groups, clusters, channels, generator=generator)
    labels = torch.randint(0, clusters, (groups, tokens), generator=generator)
    picked = torch.gather(centres, 1, labels.unsqueeze(-1).expand(groups, tokens, channels))
    return picked + spread * torch.randn(groups, tokens, channels, generator=generator)


def naive_em_step(x, bases, tau, normalize=False):
    """Reference E+M step written directly from Eq. 8 and 10 (no guards), float64."""
    x64, b64 = x.double(), bases.double()
    xe = F.normalize(x64, dim=-1) if normalize else x64  # normalize: the E-step on unit tokens and bases
    if normalize:
        b64 = F.normalize(b64, dim=-1)
    logits = torch.einsum("gmc,gkc->gmk", xe, b64) / tau
    z = torch.softmax(logits, dim=-1)
    return torch.einsum("gmk,gmc->gkc", z, x64) / z.sum(dim=1).unsqueeze(-1), z


# ------------------------------------------------------------------------------------------ E/M steps


def test_responsibilities_are_distributions():
    x = random_features(scale=3.0)
    bases = random_features(tokens=10, seed=1)
    z = e_step(x, bases, tau=0.05)
    assert z.shape == (2, 300, 10)
    assert z.dtype == torch.float32
    assert bool((z >= 0).all())
    torch.testing.assert_close(z.sum(dim=-1), torch.ones(2, 300), rtol=0, atol=1e-5)
    # Large logits (|x . mu| / tau ~ 1e5) must not overflow thanks to max-subtraction.
    z_hot = e_step(x * 100, bases, tau=0.01)
    assert bool(torch.isfinite(z_hot).all())
    torch.testing.assert_close(z_hot.sum(dim=-1), torch.ones(2, 300), rtol=0, atol=1e-5)


def test_e_step_matches_softmax_definition():
    x = random_features(tokens=50, channels=8)
    bases = random_features(tokens=6, channels=8, seed=3)
    expected = torch.softmax(torch.einsum("gmc,gkc->gmk", x.double(), bases.double()) / 0.3, dim=-1)
    torch.testing.assert_close(e_step(x, bases, 0.3).double(), expected, rtol=1e-5, atol=1e-6)


def test_estimate_responsibilities_are_distributions_and_reconstruct_bases():
    x = random_features(tokens=400, channels=12, scale=2.0)
    result = estimate_bases(x, num_bases=12, iterations=3, tau=0.5, return_responsibilities=True)
    assert isinstance(result, EMResult)
    z = result.responsibilities
    assert z.shape == (2, 400, 12)
    assert bool((z >= 0).all())
    torch.testing.assert_close(z.sum(dim=-1), torch.ones(2, 400), rtol=0, atol=1e-5)
    # The returned bases are exactly the Z-weighted means of the tokens (Eq. 10).
    torch.testing.assert_close(result.bases, m_step(x, z), rtol=1e-5, atol=1e-5)
    # So they lie in the convex hull: per channel between the tokens' min and max.
    low = x.min(dim=1, keepdim=True).values
    high = x.max(dim=1, keepdim=True).values
    assert bool((result.bases >= low - 1e-5).all()) and bool((result.bases <= high + 1e-5).all())
    assert len(result.objective) == 3 and all(math.isfinite(v) for v in result.objective)


def test_iterations_zero_returns_distinct_initial_tokens():
    x = random_features(groups=2, tokens=64, channels=8)
    result = estimate_bases(x, num_bases=10, iterations=0)
    assert result.bases.shape == (2, 10, 8)
    assert result.objective == []
    for g in range(2):
        # Every basis is one of the group's own tokens, and no token is picked twice.
        matches = (result.bases[g].unsqueeze(1) == x[g].unsqueeze(0)).all(dim=-1)
        assert bool((matches.sum(dim=1) == 1).all())
        assert len(set(matches.float().argmax(dim=1).tolist())) == 10


def test_em_iterations_match_naive_reference():
    x = random_features(tokens=200, channels=8, scale=1.5)
    init = estimate_bases(x, num_bases=7, iterations=0, seed=4).bases
    for normalize in (False, True):
        reference = init.double()
        for _ in range(4):
            reference, _ = naive_em_step(x, reference, tau=0.2, normalize=normalize)
        got = estimate_bases(x, num_bases=7, iterations=4, tau=0.2, init_bases=init, normalize=normalize).bases
        torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=1e-5)


def test_normalize_uses_unit_tokens_and_bases_in_e_step_only():
    x = random_features(tokens=200, channels=8, scale=2.0)
    init = estimate_bases(x, num_bases=6, iterations=0).bases * 5.0
    result = estimate_bases(x, num_bases=6, iterations=1, tau=0.1, init_bases=init, normalize=True,
                            return_responsibilities=True)
    torch.testing.assert_close(result.responsibilities,
                               e_step(F.normalize(x, dim=-1), F.normalize(init, dim=-1), 0.1))
    # The M-step output is an unnormalised weighted mean, not a unit vector.
    torch.testing.assert_close(result.bases, m_step(x, result.responsibilities), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(result.bases.norm(dim=-1), torch.ones(2, 6), atol=1e-2)


def test_small_tau_is_kmeans():
    """tau -> 0: one-hot responsibilities; each basis is the mean of the tokens it wins (Lloyd step with
    the paper's dot-product similarity, empty clusters keep their centre)."""
    x = random_features(groups=1, tokens=240, channels=6, scale=3.0, seed=5)
    init = estimate_bases(x, num_bases=5, iterations=0, seed=2).bases
    centres = init[0].clone()
    for iterations in (1, 2, 3):
        assignment = (x[0] @ centres.T).argmax(dim=1)
        updated = centres.clone()
        for k in range(5):
            members = x[0][assignment == k]
            if len(members):
                updated[k] = members.mean(dim=0)
        centres = updated
        result = estimate_bases(x, num_bases=5, iterations=iterations, tau=1e-4, seed=2,
                                return_responsibilities=True)
        z = result.responsibilities[0]
        assert bool((z.max(dim=-1).values > 0.999).all()), "responsibilities should be one-hot"
        assert torch.equal(z.argmax(dim=-1), assignment)
        torch.testing.assert_close(result.bases[0], centres, rtol=1e-4, atol=1e-4)


def test_m_step_dead_basis_keeps_previous_value():
    x = random_features(groups=1, tokens=30, channels=4)
    z = torch.zeros(1, 30, 3)
    z[0, :15, 0] = 1.0
    z[0, 15:, 1] = 1.0  # basis 2 wins no token at all
    previous = torch.full((1, 3, 4), 7.0)
    bases = m_step(x, z, previous_bases=previous)
    torch.testing.assert_close(bases[0, 0], x[0, :15].mean(dim=0))
    torch.testing.assert_close(bases[0, 1], x[0, 15:].mean(dim=0))
    torch.testing.assert_close(bases[0, 2], torch.full((4,), 7.0))
    # Without a previous value the basis is still finite (no 0/0).
    assert bool(torch.isfinite(m_step(x, z)).all())


# ------------------------------------------------------------------------------------------ robustness


def test_clustered_features_stay_finite():
    x = clustered_features()  # 20 tight clusters, 8192 tokens, C = 320
    # The unguarded M-step does blow up here (dead bases from the Gaussian init): the guard is exercised.
    init = estimate_bases(x, num_bases=256, iterations=0, init="gaussian").bases
    logits = torch.bmm(x, init.transpose(1, 2)) / 0.05
    z = torch.softmax(logits, dim=-1)
    naive = torch.bmm(z.transpose(1, 2), x) / z.sum(dim=1).unsqueeze(-1)  # fp32, unguarded Eq. 11
    assert not bool(torch.isfinite(naive).all())
    for init_name in ("gaussian", "tokens"):
        result = estimate_bases(x, num_bases=256, iterations=3, tau=0.05, init=init_name)
        assert result.bases.shape == (1, 256, 320)
        assert bool(torch.isfinite(result.bases).all()), init_name
        assert all(math.isfinite(v) for v in result.objective)


def test_same_seed_same_bases_different_seed_different():
    x = random_features(tokens=500, channels=8)
    for init in ("tokens", "gaussian"):
        first = estimate_bases(x, num_bases=16, iterations=2, tau=0.5, seed=11, init=init).bases
        again = estimate_bases(x, num_bases=16, iterations=2, tau=0.5, seed=11, init=init).bases
        other = estimate_bases(x, num_bases=16, iterations=2, tau=0.5, seed=12, init=init).bases
        assert torch.equal(first, again), init
        assert not torch.allclose(first, other), init


def test_gaussian_init_follows_feature_statistics():
    mean = torch.tensor([5.0, -2.0, 0.0])
    std = torch.tensor([0.5, 3.0, 1.0])
    x = (random_features(groups=1, tokens=4000, channels=3) * std + mean)
    bases = estimate_bases(x, num_bases=4000, iterations=0, init="gaussian").bases[0]
    torch.testing.assert_close(bases.mean(dim=0), mean, rtol=0, atol=0.15)
    torch.testing.assert_close(bases.std(dim=0), std, rtol=0.1, atol=0)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_input_matches_fp32(half):
    x = random_features(tokens=600, channels=32, scale=1.0).to(half)
    low = estimate_bases(x, num_bases=24, iterations=3, tau=0.5, return_responsibilities=True)
    full = estimate_bases(x.float(), num_bases=24, iterations=3, tau=0.5, return_responsibilities=True)
    assert low.bases.dtype == half
    assert low.responsibilities.dtype == torch.float32
    # The maths runs in fp32 either way: only the final cast differs.
    torch.testing.assert_close(low.responsibilities, full.responsibilities, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(low.bases.float(), full.bases, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(low.bases, full.bases.to(half), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ settings


def test_num_bases_larger_than_tokens_is_clamped_with_warning():
    x = random_features(groups=2, tokens=20, channels=4)
    with pytest.warns(UserWarning, match="num_bases"):
        result = estimate_bases(x, num_bases=50, iterations=1)
    assert result.bases.shape == (2, 20, 4)
    assert result.num_bases == 20


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(num_bases=0), "num_bases"),
        (dict(num_bases=-3), "num_bases"),
        (dict(iterations=-1), "iterations"),
        (dict(tau=0.0), "tau"),
        (dict(tau=-0.05), "tau"),
        (dict(tau=float("nan")), "tau"),
        (dict(tau=float("inf")), "tau"),
        (dict(init="uniform"), "init"),
        (dict(chunk_tokens=0), "chunk_tokens"),
        (dict(init_bases=torch.zeros(2, 5, 4)), "init_bases"),  # K mismatch with num_bases=8
        (dict(init_bases=torch.zeros(2, 8, 3)), "init_bases"),  # C mismatch
    ],
)
def test_bad_settings_raise(kwargs, pattern):
    x = random_features(groups=2, tokens=40, channels=4)
    settings = dict(num_bases=8, iterations=2, tau=0.05)
    settings.update(kwargs)
    with pytest.raises(STEMError, match=pattern):
        estimate_bases(x, **settings)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_raise(bad):
    x = random_features(groups=1, tokens=40, channels=4)
    x[0, 7, 2] = bad
    with pytest.raises(STEMError, match="NaN/Inf"):
        estimate_bases(x, num_bases=4)


def test_features_must_be_3d():
    with pytest.raises(STEMError, match=r"\[G, M, C\]"):
        estimate_bases(torch.randn(40, 4), num_bases=4)
    assert issubclass(STEMError, ValueError)


def test_init_bases_overrides_init():
    x = random_features(groups=2, tokens=40, channels=4)
    start = random_features(groups=2, tokens=6, channels=4, seed=9)
    result = estimate_bases(x, num_bases=6, iterations=0, init="gaussian", init_bases=start)
    torch.testing.assert_close(result.bases, start)


# ------------------------------------------------------------------------------------------ chunking


@pytest.mark.parametrize("normalize", [False, True])
def test_chunked_equals_unchunked(normalize):
    x = random_features(groups=2, tokens=1000, channels=24, scale=1.5)
    settings = dict(num_bases=32, iterations=3, tau=0.3, seed=1, normalize=normalize, return_responsibilities=True)
    whole = estimate_bases(x, chunk_tokens=1000, **settings)
    for chunk in (256, 333, 999, 64, 1):  # 333, 999 and 64 do not divide M = 1000
        chunked = estimate_bases(x, chunk_tokens=chunk, **settings)
        torch.testing.assert_close(chunked.bases, whole.bases, rtol=1e-5, atol=1e-5, msg=f"chunk {chunk}")
        # Z amplifies the bases' fp32 rounding by |x| / tau, hence the looser bound (a dropped or doubled
        # chunk would be off by orders of magnitude more).
        torch.testing.assert_close(chunked.responsibilities, whole.responsibilities, rtol=1e-4, atol=1e-4)
        assert chunked.objective == pytest.approx(whole.objective, rel=1e-5)


def test_automatic_chunking_over_budget(monkeypatch):
    x = random_features(groups=2, tokens=700, channels=16)
    whole = estimate_bases(x, num_bases=16, iterations=2, tau=0.3)
    seen_chunks = []
    original = em._em_pass

    def spy(x_, estep_bases, tau, chunk, *args, **kwargs):
        seen_chunks.append(chunk)
        return original(x_, estep_bases, tau, chunk, *args, **kwargs)

    # Budget of 100 tokens' worth of [G, K] fp32 responsibilities -> chunks of 100 tokens.
    monkeypatch.setattr(em, "RESPONSIBILITY_BUDGET_BYTES", 100 * 2 * 16 * 4)
    monkeypatch.setattr(em, "_em_pass", spy)
    chunked = estimate_bases(x, num_bases=16, iterations=2, tau=0.3)
    assert seen_chunks == [100, 100]
    torch.testing.assert_close(chunked.bases, whole.bases, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ warm start


def test_warm_start_reaches_cold_fixed_point():
    x = clustered_features(clusters=6, tokens=900, channels=16, spread=0.4, seed=3, groups=2)
    settings = dict(num_bases=6, tau=1.0, seed=0)
    cold_long = estimate_bases(x, iterations=150, **settings)
    # Continuing from a previous (short) cold run reaches the same bases as one long cold run.
    previous = estimate_bases(x, iterations=3, **settings)
    warm = estimate_bases(x, iterations=147, init_bases=previous.bases, **settings)
    torch.testing.assert_close(warm.bases, cold_long.bases, rtol=1e-5, atol=1e-5)
    # The long run is a fixed point on this stationary input: warm-starting from it stays put ...
    stay = estimate_bases(x, iterations=10, init_bases=cold_long.bases, **settings)
    torch.testing.assert_close(stay.bases, cold_long.bases, rtol=1e-5, atol=1e-5)
    # ... and a slightly perturbed warm start returns to it.
    nudged = cold_long.bases + 0.05 * random_features(groups=2, tokens=6, channels=16, seed=8)
    back = estimate_bases(x, iterations=150, init_bases=nudged, **settings)
    torch.testing.assert_close(back.bases, cold_long.bases, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ released variant


def test_released_variant_shapes_and_value_bases():
    groups, tokens = 4, 500
    k = random_features(groups=groups, tokens=tokens, channels=8, seed=1)
    v = random_features(groups=groups, tokens=tokens, channels=12, seed=2)
    k_bases, v_bases = released_variant_bases(k, v, num_bases=16, iterations=5, tau=0.01, seed=0)
    assert k_bases.shape == (groups, 16, 8) and v_bases.shape == (groups, 16, 12)
    assert bool(torch.isfinite(k_bases).all()) and bool(torch.isfinite(v_bases).all())
    again = released_variant_bases(k, v, num_bases=16, iterations=5, tau=0.01, seed=0)
    assert torch.equal(again[0], k_bases) and torch.equal(again[1], v_bases)

    # Reference (tokenflow_utils.py): 5 iterations, E-step with mu / (|mu| + 1e-4), M-step z / (sum z + 1e-4),
    # then the last Z weights both k and v.
    start = random_features(groups=groups, tokens=16, channels=8, seed=3)
    k_bases, v_bases = released_variant_bases(k, v, num_bases=16, iterations=5, tau=0.05, init_bases=start)
    bases = start
    for _ in range(5):
        z = e_step(k, bases / (bases.norm(dim=-1, keepdim=True) + 1e-4), 0.05)
        mass = z.sum(dim=1).unsqueeze(-1) + 1e-4
        bases = torch.bmm(z.transpose(1, 2), k) / mass
    torch.testing.assert_close(k_bases, bases, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v_bases, torch.bmm(z.transpose(1, 2), v) / mass, rtol=1e-5, atol=1e-5)
    # Weighted means of v: inside the per-channel range of the values.
    assert bool((v_bases >= v.min(dim=1, keepdim=True).values - 1e-5).all())
    assert bool((v_bases <= v.max(dim=1, keepdim=True).values + 1e-5).all())


def test_released_variant_half_precision_and_errors():
    k = random_features(groups=2, tokens=300, channels=8, seed=1).half()
    v = random_features(groups=2, tokens=300, channels=8, seed=2).half()
    k_bases, v_bases = released_variant_bases(k, v, num_bases=32)
    assert k_bases.dtype == torch.float16 and v_bases.dtype == torch.float16
    assert bool(torch.isfinite(k_bases).all()) and bool(torch.isfinite(v_bases).all())
    with pytest.raises(STEMError, match="iterations"):
        released_variant_bases(k, v, num_bases=8, iterations=0)
    with pytest.raises(STEMError, match="v must have"):
        released_variant_bases(k, v[:, :100], num_bases=8)
