"""Videoshop maths without ComfyUI: the schedule and strength rule, per-frame normalisation, the exact inverse
of the Euler v-step, noise extrapolation on an analytic denoiser with straight trajectories, the per-channel
rescale, the window plan, and the drivers end to end through a fake host runner."""
import math

import pytest
import torch

from comfyui_stem.stem_core.errors import STEMError
from comfyui_stem.stem_core.inversion import ddim_step
from comfyui_stem.stem_core.videoshop import (NORMALIZE_MODES, Window, blend_weight, denormalize_latents,
                                              edit_step_count, edit_video, guess_noisier, invert, invert_video,
                                              inverse_euler_step, karras_sigmas, match_latent_statistics,
                                              normalize_concat, normalize_latents, plan_windows, seam_pairs,
                                              strength_sigmas, euler_sample)

SF = 0.18215


def video(frames=6, seed=0, shape=(4, 8, 8)):
    """A latent video with different means and spreads per frame and per channel, like real SVD latents."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((frames,) + shape, generator=g)
    x = x * torch.linspace(0.5, 2.0, frames).view(-1, 1, 1, 1) + torch.linspace(-1, 1, frames).view(-1, 1, 1, 1)
    return x + torch.tensor([0.3, -0.2, 0.1, 0.5]).view(1, -1, 1, 1)


# ----------------------------------------------------------------------------------------------------
# schedule and strength


def test_karras_schedule_is_the_reference_one():
    s = karras_sigmas(25)
    assert s.shape == (26,) and s[-1] == 0
    # values from the spec (the HF SVD scheduler config: karras, 0.002 / 700, rho 7)
    for k, v in {0: 700.0, 9: 49.81, 12: 15.590, 13: 10.097, 17: 1.273, 18: 0.678, 24: 0.002}.items():
        assert math.isclose(float(s[k]), v, rel_tol=2e-3), (k, float(s[k]), v)


def test_strength_picks_the_reference_start_step():
    assert edit_step_count(25, 0.55) == 13  # k0 = 12
    edit, inv = strength_sigmas(karras_sigmas(25), 0.55)
    assert len(edit) == 14 and math.isclose(float(edit[0]), 15.590, rel_tol=1e-3) and edit[-1] == 0
    assert torch.equal(inv, edit.flip(0)) and inv[0] == 0
    assert edit_step_count(4, 0.55) == 2 and edit_step_count(10, 0.99) == 9


@pytest.mark.parametrize("strength, words", [(0.0, ["strength", "edits nothing", "0.55"]),
                                             (1.0, ["strength", "pure noise", "below 1"]),
                                             (1.5, ["strength", "pure noise"]),
                                             (0.03, ["strength", "rounds down to 0 edit steps", "at least 0.04"])])
def test_strength_edges_are_refused_with_the_fix(strength, words):
    with pytest.raises(STEMError) as err:
        edit_step_count(25, strength)
    text = str(err.value)
    assert text.startswith("strength:")
    for w in words:
        assert w in text, text


# ----------------------------------------------------------------------------------------------------
# normalisation and rescale


@pytest.mark.parametrize("mode", NORMALIZE_MODES)
def test_normalize_then_denormalize_is_the_identity(mode):
    x = video()
    z, norm = normalize_latents(x, mode)
    assert torch.allclose(denormalize_latents(z, norm), x, atol=1e-5, rtol=1e-5)
    if mode == "per frame":
        # every frame alone has mean 0 and (unbiased) std 1 over (C, h, w): per FRAME, as the reference
        flat = z.reshape(z.shape[0], -1)
        assert torch.allclose(flat.mean(1), torch.zeros(z.shape[0]), atol=1e-5)
        assert torch.allclose(flat.std(1), torch.ones(z.shape[0]), atol=1e-4)
        # a frame's normalisation does not depend on the other frames
        z2, _ = normalize_latents(x[2:3], mode)
        assert torch.allclose(z2[0], z[2], atol=1e-6)
        # and slicing the statistics keeps the identity per frame
        assert torch.allclose(denormalize_latents(z[2:4], norm.frames(2, 4)), x[2:4], atol=1e-5)
    elif mode == "per channel":
        flat = z.transpose(0, 1).reshape(4, -1)
        assert torch.allclose(flat.std(1), torch.ones(4), atol=1e-4)
    else:
        assert torch.equal(z, x)


def test_normalize_concat_is_global_per_image_then_raw_sized():
    r = video(frames=1) * 5 + 3
    c = normalize_concat(r, SF)
    assert c.shape == r.shape
    assert abs(float(c.mean())) < 1e-5 and math.isclose(float(c.std() * SF), 1.0, rel_tol=1e-4)


def test_match_latent_statistics_maps_one_frame_and_keeps_the_motion():
    x, ref = video(seed=1), video(frames=2, seed=2) * 3 - 1
    y = match_latent_statistics(x, ref, source_frame=0, reference_frame=1)
    flat_y, flat_r = y[0].reshape(4, -1), ref[1].reshape(4, -1)
    assert torch.allclose(flat_y.mean(1), flat_r.mean(1), atol=1e-5)
    assert torch.allclose(flat_y.std(1), flat_r.std(1), atol=1e-5)
    # the same affine map on every frame: frame differences are scaled per channel only
    gain = flat_r.std(1) / x[0].reshape(4, -1).std(1)
    assert torch.allclose(y[3] - y[1], (x[3] - x[1]) * gain.view(-1, 1, 1), atol=1e-5)
    # scale-equivariant: on scaled latents the result is the scaled result
    assert torch.allclose(match_latent_statistics(x * SF, ref * SF, 0, 1), y * SF, atol=1e-5)
    # a flat channel is only shifted, never divided by zero
    flat = x.clone()
    flat[0, 2] = 0.5
    assert torch.isfinite(match_latent_statistics(flat, ref)).all()


# ----------------------------------------------------------------------------------------------------
# the inversion step


def nonlinear_denoiser(x, sigma):
    s = float(sigma)
    return torch.tanh(x) * 0.8 / (1 + 0.1 * s) + 0.05 * x.roll(1, dims=-1)


@pytest.mark.parametrize("s, s_next", [(0.0, 0.002), (0.678, 1.273), (3.87, 6.354), (10.097, 15.59)])
def test_inverse_euler_step_undoes_the_sampler_step_when_the_guess_is_right(s, s_next):
    """With the guess equal to the true noisier latent the inverse is exact, for any denoiser."""
    x_p = video(seed=3) * max(s_next, 1.0)
    x = ddim_step(x_p, nonlinear_denoiser(x_p, s_next), s_next, s)  # the sampler's Euler step down
    back = inverse_euler_step(x, x_p, nonlinear_denoiser(x_p, s_next), s, s_next)
    assert torch.allclose(back, x_p, atol=1e-4 * max(1.0, s_next), rtol=1e-5)


def straight_lines(direction):
    """An analytic denoiser whose probability-flow trajectories are exactly straight: every x at sigma s lies
    on the line (x - s u) + s' u, and D(x, s) = x - s u is its clean end. D depends on x, so a wrong guess of
    the noisier latent gives a wrong step."""
    return lambda x, sigma: x - float(sigma) * direction


@pytest.mark.parametrize("steps", [4, 10, 25, 50])
def test_extrapolation_is_exact_on_straight_trajectories_and_plain_inversion_is_not(steps):
    clean = video(seed=4)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(5))
    # the trajectory of `clean` the model follows: the fixed noise direction the extrapolation also uses
    denoise = straight_lines(noise * clean.std())
    edit, ascending = strength_sigmas(karras_sigmas(steps), 0.55)
    errors = {}
    for extrapolate in (True, False):
        x_t = invert(denoise, clean, ascending, noise, extrapolate=extrapolate)
        errors[extrapolate] = float((euler_sample(denoise, x_t, edit) - clean).abs().max())
    assert errors[True] < 1e-4, errors
    assert errors[False] > 100 * max(errors[True], 1e-6), errors


def test_guess_uses_fixed_noise_at_or_below_sigma_one_and_the_line_above():
    clean, x, fixed = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 2.0)
    assert torch.equal(guess_noisier(x, clean, fixed, 0.5, 0.8), fixed * 0.8)
    assert torch.equal(guess_noisier(x, clean, fixed, 1.0, 1.5), fixed * 1.5)
    assert torch.allclose(guess_noisier(x, clean, fixed, 2.0, 3.0), x * 1.5)
    assert torch.equal(guess_noisier(x, clean, fixed, 2.0, 3.0, extrapolate=False), x)


# ----------------------------------------------------------------------------------------------------
# windows


def test_window_plan_covers_the_clip_with_overlaps():
    assert plan_windows(14, 14, 4) == [Window(0, 0, 14, 0)]
    w = plan_windows(30, 14, 4)
    assert [(x.start, x.stop, x.overlap) for x in w] == [(0, 14, 0), (10, 24, 4), (20, 30, 4)]
    w1 = plan_windows(27, 14, 1)
    assert [(x.start, x.stop) for x in w1] == [(0, 14), (13, 27)]  # starts on the previous window's last frame
    assert seam_pairs(w, 30) == [10, 11, 12, 13, 14, 20, 21, 22, 23, 24]
    assert [blend_weight(j, 4) for j in range(4)] == [0.0, 0.25, 0.5, 0.75]
    for bad in (0, 14):
        with pytest.raises(STEMError, match="overlap"):
            plan_windows(30, 14, bad)


# ----------------------------------------------------------------------------------------------------
# the drivers through a fake host


class FakeHost:
    """run_for(window, concat) like the glue's: the loop runs in sampler space on scale * latent. The model is
    the straight-line denoiser of each window (direction: that window's fixed noise), and it records the
    concat latents it was given."""

    def __init__(self, latent, noise, normalize="per frame"):
        self.z, _ = normalize_latents(latent * SF, normalize)
        self.noise = noise
        self.concats = []

    def run_for(self, window, concat):
        self.concats.append((window.index, concat.clone()))
        clean = self.z[window.start:window.stop]
        denoise = straight_lines(self.noise[window.start:window.stop] * clean.std())

        def run(loop, sigmas, latent):
            return loop(denoise, latent * SF, sigmas) / SF
        return run


@pytest.mark.parametrize("frames, window, overlap", [(6, 14, 1), (20, 8, 1), (20, 8, 3)])
def test_invert_then_edit_with_the_source_frame_and_no_rescale_returns_the_source(frames, window, overlap):
    latent = video(frames=frames, seed=6) / SF
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    host = FakeHost(latent, noise)
    concat0 = latent[:1] * 1.1
    traj = invert_video(host.run_for, latent, concat0, karras_sigmas(12), 0.55, SF, noise,
                        window_frames=window, overlap=overlap)
    assert len(traj.windows) == len(plan_windows(frames, window, overlap))
    assert traj.inverted_latent().shape == latent.shape
    # the inversion normalised the first-frame latents; window k > 0 is conditioned on its own first frame
    assert torch.allclose(host.concats[0][1], normalize_concat(concat0, SF))
    for (k, c), w in zip(host.concats[1:], traj.windows[1:]):
        assert torch.allclose(c, normalize_concat(latent[w.start:w.start + 1], SF))
    out = edit_video(host.run_for, traj, concat0, None, rescale=False)
    assert torch.allclose(out, latent, atol=1e-4 * float(latent.abs().max())), float((out - latent).abs().max())


def test_rescale_gives_the_first_frame_the_edited_frames_statistics():
    latent = video(frames=5, seed=8) / SF
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(9))
    host = FakeHost(latent, noise)
    traj = invert_video(host.run_for, latent, latent[:1], karras_sigmas(10), 0.5, SF, noise)
    edited = latent[:1] * 0.5 + 2.0
    out = edit_video(host.run_for, traj, edited, edited, rescale=True)
    for stat in (torch.mean, torch.std):
        assert torch.allclose(stat(out[0].reshape(4, -1), 1), stat(edited[0].reshape(4, -1), 1), atol=1e-4)
    with pytest.raises(STEMError, match="edited_latent"):
        edit_video(host.run_for, traj, edited, None, rescale=True)


def test_later_windows_are_conditioned_on_the_edited_frame_they_start_on():
    latent = video(frames=12, seed=10) / SF
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(11))
    host = FakeHost(latent, noise)
    traj = invert_video(host.run_for, latent, latent[:1], karras_sigmas(10), 0.5, SF, noise, window_frames=6,
                        overlap=2)
    host.concats.clear()
    edited = latent[:1] + 1.0
    out = edit_video(host.run_for, traj, edited, edited, rescale=True)
    assert [k for k, _ in host.concats] == [0, 1, 2]
    assert torch.equal(host.concats[0][1], edited)
    for (k, c), w in zip(host.concats[1:], traj.windows[1:]):
        # the conditioning frame is the output frame the window starts on, as it was when that window began
        # (the blend only changes later frames of the overlap)
        assert torch.allclose(c[0], out[w.start]), k


def test_seam_report_splits_warp_error_at_the_seams_from_inside():
    """A clip whose frames are identical except for a jump into frame 6 (a seam of windows of 6 with overlap 1):
    all the warp error sits at the seam pairs, none inside; one window has no seams."""
    from comfyui_stem.stem_core.videoshop import format_seam_report, seam_warp_report
    g = torch.Generator().manual_seed(0)
    still = torch.rand(1, 32, 32, 3, generator=g).repeat(10, 1, 1, 1)
    edited = still.clone()
    edited[6:] = (edited[6:] + 0.2).clamp(0, 1)
    windows = plan_windows(10, 6, 1)
    assert [(w.start, w.stop) for w in windows] == [(0, 6), (5, 10)]
    report = seam_warp_report(edited, still, windows)
    assert report["boundary_pairs"] == [5, 6] and len(report["per_pair"]) == 9
    assert report["inside"] == 0.0 and report["boundary"] > 1e-3
    assert "seams stand out" in format_seam_report(dict(report, ratio=2.0))
    assert seam_warp_report(still, still, plan_windows(10, 14, 1))["boundary"] is None
    with pytest.raises(STEMError, match="images"):
        seam_warp_report(still[:8], still[:8], windows)
