"""STEMInvert (DDIM inversion of the whole video with the model's attention context) and
STEMReconstruct (deterministic DDIM sampling back from the trajectory)."""
import logging

import torch

from ..stem_core.ddim import ddim_invert, ddim_sample, inversion_sigmas
from ..stem_core.trajectory import InversionTrajectory
from .compat import (calculate_sigmas, category, model_sampling, progress_bar, require_sd15, sample_with_function,
                     throw_if_interrupted)
from .stem_patch import find_stem_patch

TRAJECTORY = "STEM_TRAJECTORY"
MAX_STEPS = 1000


class STEMInputError(ValueError):
    pass


def check_latent(latent, name="latent"):
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not torch.is_tensor(samples) or samples.ndim != 4:
        raise STEMInputError(f"{name}: expected a LATENT with samples [frames, 4, h, w] (VAE Encode of the video)")
    if samples.shape[0] < 1:
        raise STEMInputError(f"{name}: the LATENT has no frames")
    if not torch.isfinite(samples).all():
        raise STEMInputError(f"{name}: the LATENT contains NaN or Inf; re-encode the video with VAE Encode")
    return samples


def check_conditioning(conditioning, model, name):
    if not isinstance(conditioning, list) or not conditioning or not torch.is_tensor(conditioning[0][0]):
        raise STEMInputError(f"{name}: expected a CONDITIONING (connect a CLIP Text Encode node)")
    expected = getattr(getattr(model.model, "model_config", None), "unet_config", {}).get("context_dim")
    for cond in conditioning:
        t = cond[0]
        if not torch.isfinite(t).all():
            raise STEMInputError(f"{name}: the conditioning contains NaN or Inf; re-encode the prompt")
        if expected is not None and t.shape[-1] != expected:
            raise STEMInputError(f"{name}: the conditioning has {t.shape[-1]} channels but the model expects "
                                 f"{expected}; encode the prompt with this model's CLIP")


def check_steps(steps):
    if not 1 <= int(steps) <= MAX_STEPS:
        raise STEMInputError(f"steps must be between 1 and {MAX_STEPS}, got {steps}; the paper uses 50")


def latent_scale(model) -> float:
    return float(model.model.latent_format.scale_factor)


def prepare_video_model(model, frames: int):
    """A clone that knows the video length (so STEM refuses partial batches) with a fresh patch state."""
    m = model.clone()
    topts = m.model_options.setdefault("transformer_options", {})
    topts["stem_video_frames"] = int(frames)
    patch = find_stem_patch(m)
    if patch is not None:
        patch.reset()
    return m, patch


def run_guarded(what: str, fn):
    """Turns allocation failures into an actionable message; everything else passes through."""
    try:
        return fn()
    except torch.OutOfMemoryError as exc:  # CUDA
        raise STEMInputError(_oom_message(what)) from exc
    except RuntimeError as exc:
        text = str(exc)
        if "out of memory" in text or "DefaultCPUAllocator" in text or "can't allocate memory" in text:
            raise STEMInputError(_oom_message(what)) from exc
        raise


def check_finite_result(x, what):
    """A model that overflows (fp16) or is broken yields NaN/Inf; never hand that on as a result."""
    if not torch.isfinite(x).all():
        raise STEMInputError(
            f"{what} produced NaN or Inf: the model's output overflowed or is broken. Try the model in fp32 "
            f"(e.g. --force-fp32), check the checkpoint, and use the same model for inversion and sampling.")
    return x


def _oom_message(what):
    return (f"{what} ran out of memory. Use fewer frames (frame_load_cap / select_every_nth on the loader), a "
            f"smaller size (custom_width/height), fewer bases, or set chunk_tokens on STEM Basis Estimate to "
            f"bound EM memory.")


class _StepReporter:
    def __init__(self, total):
        self.bar = progress_bar(total)

    def __call__(self, i, total):
        throw_if_interrupted()
        self.bar.update(1)


def _inversion_hooks(model):
    """Patch objects on the clone that want to see the inversion (e.g. an attention store).

    Protocol: `begin_inversion(frames, sigmas)` before sampling, `finish_inversion(trajectory)` after,
    `abort_inversion()` when sampling is cancelled or fails.
    """
    topts = model.model_options.get("transformer_options", {})
    found = []
    for group in topts.get("patches", {}).values():
        found.extend(group)
    for group in topts.get("patches_replace", {}).values():
        found.extend(group.values())
    unique = {id(p): p for p in found if hasattr(p, "begin_inversion") or hasattr(p, "finish_inversion")}
    return list(unique.values())


def invert_video(model, samples, conditioning, steps):
    """-> (inverted unscaled latent [F,4,h,w], InversionTrajectory)."""
    frames = samples.shape[0]
    m, patch = prepare_video_model(model, frames)
    hooks = _inversion_hooks(m)
    sampling_sigmas = calculate_sigmas(m, "ddim_uniform", steps)
    start = float(model_sampling(m).sigma_min)
    sigmas = inversion_sigmas(sampling_sigmas, start)
    recorded = {}
    report = _StepReporter(steps)
    for hook in hooks:
        if hasattr(hook, "begin_inversion"):
            hook.begin_inversion(frames, sigmas)
    bases_by_sigma = {}
    if patch is not None and patch.uses_context_patch:
        def keep_bases(event):
            if event.get("kind") == "bases" and event.get("sigma") is not None:
                bases_by_sigma.setdefault(event["sigma"], {})[event["site"]] = event["bases"].detach().to("cpu")
        patch.add_observer(keep_bases)

    def sampler(model_k, x, sigmas_in, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        s_in = x.new_ones([x.shape[0]])
        x_t, latents = ddim_invert(lambda xx, s: model_k(xx, s * s_in, **extra_args), x, sigmas_in, on_step=report)
        recorded["latents"] = [t.detach().to("cpu", torch.float32) for t in latents]
        return x_t

    try:
        with torch.no_grad():
            out = run_guarded("STEM inversion", lambda: sample_with_function(
                m, sampler, sigmas, conditioning, conditioning, 1.0, samples))
        check_finite_result(out, "STEM inversion")
    except BaseException:
        # Cancel or failure: hooks drop what they recorded so nothing half-made outlives the prompt.
        for hook in hooks:
            if hasattr(hook, "abort_inversion"):
                hook.abort_inversion()
        raise
    settings = dict(vars(patch.settings)) if patch is not None else {"context": "per_frame"}
    settings["layers"] = [f"{a}_{b}" for a, b in settings.get("layers", ())]
    traj = InversionTrajectory(
        latents=recorded["latents"], inversion_sigmas=sigmas.cpu(), sampling_sigmas=sampling_sigmas.cpu(),
        latent_scale=latent_scale(m), context=settings.get("context", "per_frame"), settings=settings,
        source_conditioning=conditioning, requested_steps=steps)
    if bases_by_sigma:
        # the bases of every layer at every step: reconstruction can replay the inversion's exact context
        traj.extras["stem_bases"] = sorted(bases_by_sigma.items())
    for hook in hooks:
        if hasattr(hook, "finish_inversion"):
            hook.finish_inversion(traj)
    return out, traj


REPLAY, RE_ESTIMATE = "replay inversion bases", "re-estimate bases"


def reconstruct_video(model, trajectory, conditioning, bases_mode=REPLAY):
    m, patch = prepare_video_model(model, trajectory.frames)
    check_same_schedule(m, trajectory)
    if patch is not None and bases_mode == REPLAY and trajectory.extras.get("stem_bases"):
        patch.set_replay(trajectory.extras["stem_bases"])
    report = _StepReporter(trajectory.steps)

    def sampler(model_k, x, sigmas_in, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        s_in = x.new_ones([x.shape[0]])
        x0, _ = ddim_sample(lambda xx, s: model_k(xx, s * s_in, **extra_args), x, sigmas_in, on_step=report)
        return x0

    with torch.no_grad():
        out = run_guarded("STEM reconstruction", lambda: sample_with_function(
            m, sampler, trajectory.sampling_sigmas, conditioning, conditioning, 1.0, trajectory.noisiest_unscaled()))
    return check_finite_result(out, "STEM reconstruction")


def check_same_schedule(model, trajectory):
    sigmas = calculate_sigmas(model, "ddim_uniform", trajectory.user_steps)
    if sigmas.shape != trajectory.sampling_sigmas.shape or not torch.allclose(
            sigmas.float(), trajectory.sampling_sigmas.float(), rtol=1e-4, atol=1e-6):
        raise STEMInputError("the model's noise schedule differs from the one used for inversion; use the same "
                             "model family for inversion and reconstruction/editing")


class STEMInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model with STEM attention (STEM Basis Estimate) or a plain model "
                                           "for per-frame DDIM inversion."}),
            "latent": ("LATENT", {"tooltip": "All frames of the video (VAE Encode of STEM Load Video)."}),
            "source_conditioning": ("CONDITIONING", {"tooltip": "The source prompt describing the video."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": MAX_STEPS, "tooltip":
                              "DDIM steps (paper: 50). Reconstruction and editing must use the same number."}),
        }}

    RETURN_TYPES = ("LATENT", TRAJECTORY, "STRING")
    RETURN_NAMES = ("inverted_latent", "trajectory", "info")
    OUTPUT_TOOLTIPS = ("x_T: the noisiest latent, ready for KSamplerAdvanced (add_noise off) or our nodes.",
                       "Every inverted latent, the schedule and the settings, for reconstruction and editing.",
                       "A one-line description of the inversion.")
    FUNCTION = "invert"
    CATEGORY = category("inversion")
    TITLE = "STEM Invert (DDIM inversion of the video)"
    DESCRIPTION = ("Deterministic DDIM inversion of every frame with the source prompt and no CFG; with STEM "
                   "attention each frame reads keys and values from bases of the whole video.")

    def invert(self, model, latent, source_conditioning, steps):
        require_sd15(model, self.TITLE)
        samples = check_latent(latent)
        check_conditioning(source_conditioning, model, "source_conditioning")
        check_steps(steps)
        out, traj = invert_video(model, samples, source_conditioning, int(steps))
        logging.info("[STEM] %s", traj.describe())
        return ({"samples": out}, traj, traj.describe())


class STEMReconstruct:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "Usually the same (patched) model used for inversion."}),
            "trajectory": (TRAJECTORY, {"tooltip": "From STEM Invert."}),
            "bases": ([REPLAY, RE_ESTIMATE], {"default": REPLAY, "tooltip":
                "With STEM attention: replay the bases the inversion estimated at each step (the reconstruction "
                "then reads exactly the inversion's video context), or run EM again on the sampled features."}),
        }, "optional": {
            "conditioning": ("CONDITIONING", {"tooltip": "Defaults to the source prompt used for inversion."}),
        }}

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("reconstruction",)
    OUTPUT_TOOLTIPS = ("The video sampled back from x_T with deterministic DDIM (cfg 1).",)
    FUNCTION = "reconstruct"
    CATEGORY = category("inversion")
    TITLE = "STEM Reconstruct (DDIM sampling)"
    DESCRIPTION = ("Deterministic DDIM sampling from the inverted latent with the inversion's schedule. Equal to "
                   "KSamplerAdvanced with add_noise off, euler, ddim_uniform and cfg 1.")

    def reconstruct(self, model, trajectory, bases=REPLAY, conditioning=None):
        require_sd15(model, self.TITLE)
        if not isinstance(trajectory, InversionTrajectory):
            raise STEMInputError("trajectory: connect the trajectory output of STEM Invert")
        if bases not in (REPLAY, RE_ESTIMATE):
            raise STEMInputError(f"bases must be '{REPLAY}' or '{RE_ESTIMATE}', got '{bases}'")
        cond = conditioning if conditioning is not None else trajectory.source_conditioning
        check_conditioning(cond, model, "conditioning")
        return ({"samples": reconstruct_video(model, trajectory, cond, bases)},)


NODE_CLASS_MAPPINGS = {"STEMInvert": STEMInvert, "STEMReconstruct": STEMReconstruct}
