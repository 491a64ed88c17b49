"""DDIM inversion/sampling in sigma space, checked against an analytic (Gaussian-data) denoiser."""

import math

import pytest
import torch

from comfyui_stem.stem_core.inversion import (ddim_invert, ddim_sample, ddim_step, inversion_model_input,
                                              inversion_sigmas)
from tests.core.oracles import GaussianDataDenoiser, ddim_uniform_sigmas, scaled_linear_sigmas

MEAN, STD = 0.3, 0.5


def sd15_ddim_uniform(steps):
    """Built by hand (not via the helpers) so the helpers are checked against it."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    sig = ((1 - abar) / abar).sqrt()
    picked = sig[1::1000 // steps].flip(0)
    return torch.cat([picked, torch.zeros(1, dtype=torch.float64)])


def clean_latents(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return (MEAN + STD * torch.randn(4, 8, 8, generator=g, dtype=torch.float64)).to(dtype)


def reconstruction_rms(steps, dtype=torch.float64):
    x0 = clean_latents(dtype)
    sampling = sd15_ddim_uniform(steps)
    den = GaussianDataDenoiser(MEAN, STD)
    x_T, inv_lat = ddim_invert(den, x0, inversion_sigmas(sampling))
    x_rec, smp_lat = ddim_sample(den, x_T, sampling)
    assert x_rec.dtype == dtype
    assert len(inv_lat) == steps + 1 and len(smp_lat) == steps + 1
    assert den.calls == 2 * steps
    return ((x_rec.double() - x0.double()) ** 2).mean().sqrt().item()


def test_helpers_match_comfy_sd15_schedule():
    ms = scaled_linear_sigmas()
    assert ms.shape == (1000,)
    assert ms[0].item() == pytest.approx(0.0292, abs=1e-4)
    assert ms[-1].item() == pytest.approx(14.6146, abs=1e-3)
    for steps in (5, 10, 25, 50):
        s = ddim_uniform_sigmas(ms, steps)
        assert len(s) == steps + 1 and s[-1] == 0
        torch.testing.assert_close(s, sd15_ddim_uniform(steps).float(), rtol=1e-5, atol=1e-6)


def test_reconstruction_error_shrinks_with_steps():
    errors = [reconstruction_rms(n) for n in (5, 10, 25, 50)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    # the inherent DDIM discretisation error is O(1/steps); at 50 steps it is under 12% of the data std
    assert errors[-1] < 0.12 * STD, errors
    assert errors[-1] * 50 == pytest.approx(errors[-2] * 25, rel=0.3), errors  # first order, no floor
    assert errors[-1] < 0.25 * errors[0], errors


def test_float32_matches_float64():
    assert reconstruction_rms(25, torch.float32) == pytest.approx(reconstruction_rms(25), rel=1e-3)


def test_trajectory_endpoints_and_noise_level():
    x0 = clean_latents()
    sampling = sd15_ddim_uniform(50)
    inv = inversion_sigmas(sampling)
    x_T, lat = ddim_invert(GaussianDataDenoiser(MEAN, STD), x0, inv)
    assert lat[0] is x0
    assert lat[-1] is x_T
    # the exact ODE scales (x - mean) by sqrt(std^2 + sigma^2) / std; Euler lands within 10%
    expected = (x0 - MEAN).std().item() * math.sqrt(STD ** 2 + sampling[0].item() ** 2) / STD
    assert (x_T - MEAN).std().item() == pytest.approx(expected, rel=0.1)
    x_rec, lat2 = ddim_sample(GaussianDataDenoiser(MEAN, STD), x_T, sampling)
    assert lat2[0] is x_T and lat2[-1] is x_rec


def test_ddim_step_formula_and_final_step():
    x = torch.full((2, 2), 3.0)
    d = torch.full((2, 2), 1.0)
    torch.testing.assert_close(ddim_step(x, d, 2.0, 1.0), torch.full((2, 2), 2.0))
    torch.testing.assert_close(ddim_step(x, d, torch.tensor(2.0), torch.tensor(4.0)), torch.full((2, 2), 5.0))
    torch.testing.assert_close(ddim_step(x, d, 2.0, 0.0), d)
    with pytest.raises(ValueError, match="sigma > 0"):
        ddim_step(x, d, 0.0, 1.0)


def test_inversion_sigmas_mirror_the_sampling_schedule():
    sampling = torch.tensor([10.0, 5.0, 1.0, 0.1, 0.0])
    torch.testing.assert_close(inversion_sigmas(sampling), torch.tensor([0.0, 0.1, 1.0, 5.0, 10.0]))
    assert inversion_sigmas([3.0, 1.0, 0.0]).tolist() == pytest.approx([0.0, 1.0, 3.0])


@pytest.mark.parametrize(
    "sampling, match",
    [
        ([10.0, 5.0, 5.0, 0.0], "strictly descending"),
        ([1.0, 5.0, 0.0], "strictly descending"),
        ([10.0, 5.0, 1.0], "end in 0"),
        ([0.0], "at least 2"),
    ],
)
def test_inversion_sigmas_validation(sampling, match):
    with pytest.raises(ValueError, match=match):
        inversion_sigmas(torch.tensor(sampling))


def test_invert_and_sample_reject_wrong_order():
    x = torch.zeros(1, 4, 2, 2)
    den = GaussianDataDenoiser()
    with pytest.raises(ValueError, match="ascending"):
        ddim_invert(den, x, torch.tensor([0.1, 1.0, 0.5]))
    with pytest.raises(ValueError, match=">= 0"):
        ddim_invert(den, x, torch.tensor([-0.1, 1.0]))
    with pytest.raises(ValueError, match="descending"):
        ddim_sample(den, x, torch.tensor([1.0, 2.0, 0.0]))


def test_on_step_called_each_step_and_exceptions_propagate():
    sampling = sd15_ddim_uniform(10)
    calls = []
    x0 = clean_latents()
    x_T, _ = ddim_invert(GaussianDataDenoiser(MEAN, STD), x0, inversion_sigmas(sampling),
                         on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 10) for i in range(10)]
    calls.clear()
    ddim_sample(GaussianDataDenoiser(MEAN, STD), x_T, sampling, on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 10) for i in range(10)]

    class Cancelled(Exception):
        pass

    def cancel_at_3(i, n):
        if i == 3:
            raise Cancelled()

    den = GaussianDataDenoiser(MEAN, STD)
    with pytest.raises(Cancelled):
        ddim_sample(den, x_T, sampling, on_step=cancel_at_3)
    assert den.calls == 4


def test_denoiser_receives_scalar_sigma_tensor_and_per_sample_sigmas_work():
    seen = []

    def fn(x, sigma):
        seen.append(sigma)
        return torch.zeros_like(x)

    ddim_sample(fn, torch.ones(2, 4, 2, 2), torch.tensor([2.0, 1.0, 0.0]))
    assert all(isinstance(s, torch.Tensor) and s.ndim == 0 for s in seen)
    assert [s.item() for s in seen] == [2.0, 1.0]

    den = GaussianDataDenoiser(0.0, 1.0)
    x = torch.ones(2, 1, 1, 1)
    out = den(x, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 0.5]))


def test_ddim_endpoints_symmetric():
    """Issue 11, item 2, on the core functions (tests/host/test_stem_invert.py has the same check through the
    nodes): inversion and sampling are mirror images of ONE schedule. Inversion starts from the clean latent at
    sigma 0, where sampling ends; the denoiser is called at the same sigmas in both directions, index by index
    (inversion step i at its destination sigma, sampling step N-1-i at the same sigma); and with the analytic
    Gaussian-data denoiser, for which DDIM is exact in the limit, the round-trip error is first order in 1/steps
    with no floor (measured: 18.9% / 3.8% / 0.95% of the latents' RMS at 10 / 50 / 200 steps)."""
    x0 = clean_latents()
    errors = []
    for steps in (10, 50, 200):
        sampling = sd15_ddim_uniform(steps)
        inversion = inversion_sigmas(sampling)
        assert float(inversion[0]) == float(sampling[-1]) == 0.0, "inversion must start where sampling ends"
        assert inversion[1:].tolist() == pytest.approx(sampling[:-1].flip(0).tolist(), rel=1e-6)
        oracle = GaussianDataDenoiser(MEAN, STD)
        called = []

        def denoise(x, sigma):
            called.append(float(sigma))
            return oracle(x, sigma)

        x_T, latents = ddim_invert(denoise, x0, inversion)
        at_inversion = list(called)
        called.clear()
        x_rec, _ = ddim_sample(denoise, x_T, sampling)
        at_sampling = list(called)
        assert latents[0] is x0
        assert at_sampling == pytest.approx(sampling[:-1].tolist(), rel=1e-6)
        assert at_inversion[::-1] == pytest.approx(at_sampling, rel=1e-6), \
            f"{steps} steps: inversion calls the model at {at_inversion[:3]}..., sampling at {at_sampling[::-1][:3]}..."
        errors.append(((x_rec - x0) ** 2).mean().sqrt().item() / (x0 ** 2).mean().sqrt().item())
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3, errors
    assert errors[2] < 0.015, errors
    assert errors[2] * 200 == pytest.approx(errors[1] * 50, rel=0.3), errors  # first order: no floor


def relative_rms(a, b):
    return ((a - b) ** 2).mean().sqrt().item() / (b ** 2).mean().sqrt().item()


def test_extrapolated_inversion_on_gaussian_data():
    """Noise extrapolation (issue 13, "What to build" 3: Videoshop's rule on SD1.5 DDIM) does what the maths says.

    The maths: for data N(m, sd^2) the probability-flow ODE dx/ds = (x - D(x, s)) / s has the paths
    x(s) = m + (x0 - m) sqrt(sd^2 + s^2) / sd, hyperbolas in sigma that are straight only where s >> sd. Above
    sigma 1 extrapolation guesses the model input at s' on the straight line through the clean latent z,
    x_hat = z + (x - z) s' / s, and keeps the DDIM update x' = x + (s' - s) eps(x_hat, s'); at or below sigma 1 the
    step is plain DDIM inversion. Hence:
    - it costs no model call and evaluates the model at the same sigmas as plain inversion;
    - for point-like data (sd -> 0: every path z + s c is straight) every extrapolated step lands exactly on the
      ODE path through the state it started from, at any step count; plain DDIM inversion does not;
    - for wide data the straight line is a first-order guess: the round trip still converges with no floor,
      and x_T lands closer to the exact ODE endpoint than plain inversion's."""
    x0 = clean_latents()
    sampling = sd15_ddim_uniform(50)
    inversion = inversion_sigmas(sampling)
    sig = [float(s) for s in inversion]
    first = next(i for i, s in enumerate(sig) if s > 1.0)  # first step that extrapolates
    runs = {}
    for flag in (False, True):
        oracle, seen = GaussianDataDenoiser(MEAN, STD), []

        def denoise(x, sigma):
            seen.append((float(sigma), x.clone()))
            return oracle(x, sigma)

        runs[flag] = seen, ddim_invert(denoise, x0, inversion, extrapolate=flag)[1]
    (plain_calls, plain), (extra_calls, extra) = runs[False], runs[True]
    assert [s for s, _ in extra_calls] == [s for s, _ in plain_calls] == sig[1:], "same sigmas, no extra call"
    for i in range(first):
        assert torch.equal(extra[i + 1], plain[i + 1]), f"step {i} at sigma {sig[i]:.3f} <= 1 must be plain DDIM"
    for i in range(first, len(sig) - 1):
        guess = x0 + (extra[i] - x0) * (sig[i + 1] / sig[i])
        torch.testing.assert_close(extra_calls[i][1], guess, rtol=1e-12, atol=1e-12)
    assert relative_rms(extra[-1], plain[-1]) > 1e-3

    point_like = GaussianDataDenoiser(x0, 1e-6)  # data = the single point x0: straight ODE paths
    for steps in (5, 10, 20, 50, 200):
        sig = [float(s) for s in inversion_sigmas(sd15_ddim_uniform(steps))]
        first = next(i for i, s in enumerate(sig) if s > 1.0)
        for flag, exact in ((True, True), (False, False)):
            latents = ddim_invert(point_like, x0, torch.tensor(sig, dtype=torch.float64), extrapolate=flag)[1]
            straight = [x0 + (latents[first] - x0) * (s / sig[first]) for s in sig[first:]]
            error = max(relative_rms(a, b) for a, b in zip(latents[first:], straight))
            assert (error < 1e-8) if exact else (error > 1e-2), (steps, flag, error)

    round_trip, endpoint = {True: [], False: []}, {True: [], False: []}
    for steps in (10, 50, 200):
        sampling = sd15_ddim_uniform(steps)
        exact_x_T = MEAN + (x0 - MEAN) * math.sqrt(STD ** 2 + float(sampling[0]) ** 2) / STD
        for flag in (False, True):
            oracle = GaussianDataDenoiser(MEAN, STD)
            x_T = ddim_invert(oracle, x0, inversion_sigmas(sampling), extrapolate=flag)[0]
            round_trip[flag].append(relative_rms(ddim_sample(oracle, x_T, sampling)[0], x0))
            endpoint[flag].append(relative_rms(x_T, exact_x_T))
            assert oracle.calls == 2 * steps
    errors = round_trip[True]
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3 and errors[2] < 0.015, errors
    assert all(e < p for e, p in zip(endpoint[True], endpoint[False])), endpoint


def test_extrapolation_in_the_vp_parametrisation():
    """Videoshop's rule is written in EDM sigma space; the pack's DDIM runs in ComfyUI's sigma space, whose latents
    are the VP/DDIM latents times sqrt(1 + sigma^2) (sqrt(1 - abar) = sigma / sqrt(1 + sigma^2)). The extrapolated
    model input, mapped to VP, is the DDIM-side statement of the rule: the clean part follows sqrt(abar), the noise
    part x_vp - sqrt(abar) z keeps its direction scaled by sqrt(1 - abar') / sqrt(1 - abar). Applying the sigma-space
    formula to VP latents instead (a tempting mistake) gives a different point."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    for s, s_next in ((1.5, 2.7), (3.0, 14.6), (1.0001, 1.2)):
        x = z + s * noise
        guess = inversion_model_input(z, x, s, s_next, extrapolate=True)
        root_abar = lambda sig: 1.0 / math.sqrt(1.0 + sig * sig)
        root_one_minus = lambda sig: sig / math.sqrt(1.0 + sig * sig)
        x_vp = x * root_abar(s)
        vp_rule = root_abar(s_next) * z + (x_vp - root_abar(s) * z) * root_one_minus(s_next) / root_one_minus(s)
        torch.testing.assert_close(guess * root_abar(s_next), vp_rule, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(guess, z + s_next * noise, rtol=1e-12, atol=1e-12)  # on the straight path
        misapplied = z + (x_vp - z) * (s_next / s)
        assert (misapplied - guess * root_abar(s_next)).abs().max() > 1e-2
    plain = inversion_model_input(z, z + 0.5 * noise, 0.5, 0.8, extrapolate=True)
    torch.testing.assert_close(plain, inversion_model_input(z, z + 0.5 * noise, 0.5, 0.8, extrapolate=False))
