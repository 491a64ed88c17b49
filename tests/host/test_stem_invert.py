"""STEMBasisEstimate + STEMInvert + STEMReconstruct inside the real (in-process) ComfyUI, on a real clip."""

import pytest
import torch

from comfyui_stem.stem_core.video_io import load_video

STEM = dict(attention_context="stem", num_bases=16, iterations=2, tau=0.05, seed=0, variant="paper",
            layers="all", warm_start=True, init="tokens", chunk_tokens=0)




@pytest.fixture(scope="module")
def wolf8(comfy_host, clips):
    """8 frames of the (synthetic stand-in) clip wolf.mp4 at 64x64, IMAGE [8, 64, 64, 3]."""
    return load_video(clips / "wolf.mp4", custom_width=64, custom_height=64, frame_load_cap=8).frames


@pytest.fixture(scope="module")
def encoded(comfy_host, tiny, wolf8):
    nodes = comfy_host["nodes"]
    model, clip, vae = tiny
    return nodes.VAEEncode().encode(vae, wolf8)[0], nodes.CLIPTextEncode().encode(clip, "a wolf")[0]


def stem_model(node, model, **changes):
    return node("STEMBasisEstimate").patch(model, **{**STEM, **changes})[0]


def invert_and_reconstruct(node, model, latent, cond, steps):
    with torch.no_grad():
        inv, traj, _ = node("STEMInvert").invert(model, latent, cond, steps)
        rec = node("STEMReconstruct").reconstruct(model, traj)[0]["samples"]
    return inv["samples"], traj, rec


def rel_err(a, b):
    return float((a - b).abs().mean() / b.abs().mean())


@pytest.mark.parametrize("context", ["stem", "per_frame", "two_frame", "all_frame"])
def test_invert_then_reconstruct_real_clip(node, tiny, encoded, context):
    model = stem_model(node, tiny[0], attention_context=context)
    latent, cond = encoded
    inv, traj, rec = invert_and_reconstruct(node, model, latent, cond, 10)
    assert traj.steps == 10 and traj.frames == 8 and traj.mode == context
    assert len(traj.latents) == 11 and torch.allclose(traj.latents[0], latent["samples"] * traj.latent_scale)
    assert not torch.allclose(traj.latents[-1], traj.latents[0], atol=1e-2), "x_T is the noisy end of the trajectory"
    assert rel_err(rec, latent["samples"]) < 0.05


def test_reconstruction_error_shrinks_with_steps(node, tiny, encoded):
    """With replayed bases the reconstruction runs the inversion's own ODE backwards: finer steps, smaller error."""
    model = stem_model(node, tiny[0])
    latent, cond = encoded
    # steps that divide 1000, so ddim_uniform gives exactly that many steps (measured: 2.8% -> 1.2%)
    errors = [rel_err(invert_and_reconstruct(node, model, latent, cond, s)[2], latent["samples"]) for s in (10, 50)]
    assert errors[1] < 0.7 * errors[0]


@pytest.mark.parametrize("context", ["per_frame", "stem"])
def test_reconstruct_equals_ksampler_advanced(comfy_host, node, tiny, encoded, context):
    """STEMReconstruct (re-estimating bases) is core KSamplerAdvanced with add_noise off, euler, ddim_uniform,
    cfg 1. Per-frame: equal to float rounding. STEM: EM with tau 0.05 makes near-hard assignments, so rounding
    differences between the two step formulas can flip a few tokens; the results stay within 0.1%."""
    model = stem_model(node, tiny[0], attention_context=context)
    latent, cond = encoded
    with torch.no_grad():
        # 5 divides 1000: ddim_uniform gives exactly 5 steps, so KSamplerAdvanced's end_at_step covers them all
        inv, traj, _ = node("STEMInvert").invert(model, latent, cond, 5)
        ours = node("STEMReconstruct").reconstruct(model, traj, "re-estimate bases")[0]["samples"]
        core = comfy_host["nodes"].KSamplerAdvanced().sample(
            model, "disable", 0, 5, 1.0, "euler", "ddim_uniform", cond, cond, inv, 0, 5, "disable")[0]
    if context == "per_frame":
        assert torch.allclose(core["samples"], ours, atol=1e-4)
    else:
        assert rel_err(core["samples"], ours) < 1e-3


def test_replayed_bases_are_the_inversions(node, tiny, encoded):
    model = stem_model(node, tiny[0])
    latent, cond = encoded
    with torch.no_grad():
        _, traj, _ = node("STEMInvert").invert(model, latent, cond, 4)
    recorded = traj.extras["stem_bases"]
    assert len(recorded) == 4  # one entry per UNet evaluation of the inversion
    assert all(len(by_site) == 16 for _, by_site in recorded)
    sigmas = [s for s, _ in recorded]
    # keyed by the sigma of each UNet call: the inversion's destination sigmas, which sampling visits too
    assert sigmas == pytest.approx([float(s) for s in traj.inversion_sigmas[1:]], rel=1e-6)
    assert sigmas == pytest.approx([float(s) for s in traj.sampling_sigmas[:-1]][::-1], rel=1e-6)


def test_same_seed_same_result_and_seed_matters(node, tiny, encoded):
    latent, cond = encoded
    a = invert_and_reconstruct(node, stem_model(node, tiny[0], seed=3), latent, cond, 4)[0]
    b = invert_and_reconstruct(node, stem_model(node, tiny[0], seed=3), latent, cond, 4)[0]
    c = invert_and_reconstruct(node, stem_model(node, tiny[0], seed=4), latent, cond, 4)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stem_differs_from_per_frame(node, tiny, encoded):
    """The video context really reaches the UNet: STEM inversion is not per-frame inversion."""
    latent, cond = encoded
    stem = invert_and_reconstruct(node, stem_model(node, tiny[0]), latent, cond, 4)[0]
    plain = invert_and_reconstruct(node, tiny[0], latent, cond, 4)[0]
    assert (stem - plain).abs().max() > 1e-4


def test_patch_refuses_partial_video(node, tiny, encoded, glue):
    """If the UNet is called with fewer frames than the video, EM would be per-chunk: refuse clearly."""
    patch = glue("host").find_video_attention(stem_model(node, tiny[0]))
    n = torch.randn(4, 16, 32)
    opts = {"block": ("input", 1), "cond_or_uncond": [0], "stem_video_frames": 8, "sigmas": torch.tensor([1.0])}
    with pytest.raises(ValueError, match="saw 4 frames in one call but the video has 8"):
        patch(n, n, n, opts)


def test_input_model_is_not_modified(node, tiny, encoded):
    model = tiny[0]
    before = repr(model.model_options)
    patched = stem_model(node, model)
    invert_and_reconstruct(node, patched, *encoded, 2)
    assert repr(model.model_options) == before
    assert "attn1_patch" not in model.model_options.get("transformer_options", {}).get("patches", {})


def test_patched_clone_survives_clone_and_to(node, tiny, glue):
    patched = stem_model(node, tiny[0])
    original = glue("host").find_video_attention(patched)
    again = patched.clone()
    copy = glue("host").find_video_attention(again)
    assert copy is not None and copy is not original and copy.settings == original.settings
    again.model_patches_to(torch.device("cpu"))
    again.model_patches_to(torch.float16)
    assert glue("host").find_video_attention(again).settings == original.settings
    # a baseline with attn1_replace patches: the replaces of the copy point at the copy's patch
    two = stem_model(node, tiny[0], attention_context="two_frame").clone()
    two.model_patches_to(torch.float32)
    replaces = two.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert len(replaces) == 16
    assert all(r.patch is glue("host").find_video_attention(two) for r in replaces.values())


@pytest.mark.parametrize("bad, message", [
    ({"steps": 0}, "steps: must be between 1 and"),
    ({"latent": "nan"}, "NaN or Inf"),
    ({"latent": "empty"}, "no frames"),
    ({"cond": "wide"}, "encode the prompt with this model's CLIP"),
])
def test_invert_bad_input_messages(node, tiny, encoded, bad, message):
    latent, cond = encoded
    steps = bad.get("steps", 4)
    if bad.get("latent") == "nan":
        latent = {"samples": latent["samples"].clone().fill_(float("nan"))}
    if bad.get("latent") == "empty":
        latent = {"samples": latent["samples"][:0]}
    if bad.get("cond") == "wide":
        cond = [[torch.zeros(1, 77, 768), {}]]
    with pytest.raises(ValueError, match=message):
        node("STEMInvert").invert(stem_model(node, tiny[0]), latent, cond, steps)


@pytest.mark.parametrize("changes, message", [
    ({"num_bases": 0}, "num_bases"), ({"iterations": -1}, "iterations"), ({"tau": 0.0}, "tau"),
    ({"layers": "output_99"}, "unknown layer"),
])
def test_basis_estimate_bad_settings(node, tiny, changes, message):
    with pytest.raises(ValueError, match=message):
        stem_model(node, tiny[0], **changes)


def test_real_footage_reconstruction(comfy_host, node, tiny, shared_videos):
    """On real footage (the shared wolf.mp4; skipped without ../shared) STEM inversion + reconstruction returns
    the source latents within 5% (measured about 1-3% at 10 steps on the tiny model)."""
    frames = load_video(shared_videos / "wolf.mp4", custom_width=64, custom_height=64, frame_load_cap=8).frames
    latent = comfy_host["nodes"].VAEEncode().encode(tiny[2], frames)[0]
    cond = comfy_host["nodes"].CLIPTextEncode().encode(tiny[1], "a wolf standing in the snow")[0]
    _, traj, rec = invert_and_reconstruct(node, stem_model(node, tiny[0]), latent, cond, 10)
    assert traj.frames == 8 and rel_err(rec, latent["samples"]) < 0.05


class GaussianModel:
    """model_function_wrapper that answers every UNet call with the exact denoiser of Gaussian data N(mean, std^2)
    (the posterior mean in ComfyUI's sigma space, tests/core/oracles.py) and records the sigma of each call.
    Through it STEM Invert / STEM Reconstruct run their real ComfyUI sampling path with an oracle model."""

    def __init__(self, mean=0.3, std=0.5):
        from tests.core.oracles import GaussianDataDenoiser
        self.denoiser = GaussianDataDenoiser(mean, std)
        self.sigmas = []

    def __deepcopy__(self, memo):  # ComfyUI deep-copies model_options on clone(): keep recording here
        return self

    def __call__(self, apply_model, args):
        sigma = args["timestep"]
        self.sigmas.append(float(sigma.reshape(-1)[0]))
        return self.denoiser(args["input"], sigma)


def test_ddim_endpoints_symmetric(node, tiny):
    """Inversion and sampling are mirror images of one schedule: the model is evaluated at the same sigmas in
    both directions (index by index), and with an analytic Gaussian-data denoiser, for which DDIM is exact in the
    limit, the inversion + reconstruction error shrinks towards 0 as the steps grow, with no floor."""
    g = torch.Generator().manual_seed(0)
    latent = {"samples": (0.3 + 0.5 * torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)).float() / 0.18215}
    cond = [[torch.zeros(1, 77, 64), {}]]
    errors = []
    for steps in (10, 50, 200):
        oracle = GaussianModel()
        model = tiny[0].clone()
        model.set_model_unet_function_wrapper(oracle)
        with torch.no_grad():
            inv, traj, _ = node("STEMInvert").invert(model, latent, cond, steps)
            calls_inversion = list(oracle.sigmas)
            oracle.sigmas.clear()
            rec = node("STEMReconstruct").reconstruct(model, traj)[0]["samples"]
        calls_sampling = oracle.sigmas
        sampling = [float(s) for s in traj.sampling_sigmas[:-1]]
        assert len(calls_inversion) == len(calls_sampling) == steps
        assert calls_sampling == pytest.approx(sampling, rel=1e-6)
        assert calls_inversion[::-1] == pytest.approx(calls_sampling, rel=1e-6), \
            f"{steps} steps: inversion evaluates at {calls_inversion[:3]}..., sampling at {calls_sampling[-3:][::-1]}..."
        errors.append(rel_err(rec, latent["samples"]))
    print("round-trip error at 10 / 50 / 200 steps:", errors)
    # first order: 4-5x the steps give 4-5x less error (measured 18.5% / 3.7% / 0.94%), no floor
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3 and errors[2] < 0.015, errors


def test_invert_extrapolate_option(node, tiny):
    """STEM Invert's extrapolate (issue 13, "What to build" 3): an optional input appended last, off by default.
    On, the model is called at the same sigmas and as often as without it (zero extra calls), the inputs above
    sigma 1 change and so does x_T; the choice is kept in the trajectory's settings and said in the info, and the
    round trip through STEM Reconstruct still returns the source (Gaussian oracle, 10 steps: measured 19.5% on,
    18.5% off)."""
    inputs = node("STEMInvert").INPUT_TYPES()
    assert "extrapolate" not in inputs["required"] and list(inputs["optional"])[-1] == "extrapolate"
    assert inputs["optional"]["extrapolate"][0] == "BOOLEAN" and inputs["optional"]["extrapolate"][1]["default"] is False
    g = torch.Generator().manual_seed(0)
    latent = {"samples": (0.3 + 0.5 * torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)).float() / 0.18215}
    cond = [[torch.zeros(1, 77, 64), {}]]
    runs = {}
    for flag in (False, True):
        oracle = GaussianModel()
        model = tiny[0].clone()
        model.set_model_unet_function_wrapper(oracle)
        with torch.no_grad():
            inv, traj, info = node("STEMInvert").invert(model, latent, cond, 10, extrapolate=flag)
            calls = list(oracle.sigmas)
            rec = node("STEMReconstruct").reconstruct(model, traj)[0]["samples"]
        runs[flag] = calls, inv["samples"], traj, info, rel_err(rec, latent["samples"])
    (calls_off, x_off, traj_off, info_off, err_off), (calls_on, x_on, traj_on, info_on, err_on) = runs[False], runs[True]
    assert len(calls_on) == len(calls_off) == 10 and calls_on == pytest.approx(calls_off, rel=1e-7)
    assert rel_err(x_on, x_off) > 1e-3
    assert traj_off.settings["extrapolate"] is False and traj_on.settings["extrapolate"] is True
    assert "extrapolat" in info_on and "extrapolat" not in info_off
    print("round trip, 10 steps: extrapolate off", err_off, "on", err_on)
    assert err_on < 0.25 and err_off < 0.25, (err_on, err_off)
