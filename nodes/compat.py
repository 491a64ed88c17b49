"""The one place that knows the pinned 2024-03 ComfyUI from a current one (DESIGN.md section 2)."""
import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils

CATEGORY_ROOT = "STEM video editing"


def category(sub: str) -> str:
    return f"{CATEGORY_ROOT}/{sub}"


def model_sampling(model_patcher):
    """The ModelSampling object (sigmas, timestep conversion) of a MODEL."""
    getter = getattr(model_patcher, "get_model_object", None)
    if getter is not None:
        try:
            return getter("model_sampling")
        except Exception:  # older patchers raise on unknown names
            pass
    return model_patcher.model.model_sampling


def calculate_sigmas(model_patcher, scheduler: str, steps: int):
    """Descending sampling sigmas [steps + 1] ending in 0, on the CPU."""
    if hasattr(comfy.samplers, "calculate_sigmas"):
        try:
            return comfy.samplers.calculate_sigmas(model_sampling(model_patcher), scheduler, steps).cpu()
        except TypeError:
            pass
    return comfy.samplers.calculate_sigmas_scheduler(model_patcher.model, scheduler, steps).cpu()


def sample_with_function(model_patcher, sampler_function, sigmas, positive, negative, cfg, latent, seed=0):
    """Runs `sampler_function(model, x, sigmas, extra_args, callback, disable)` through ComfyUI's
    sampling machinery (conditioning, model loading, cfg, patches). `latent` is unscaled [B, 4, h, w];
    the noise is zero, so the sampler starts from the latent itself. Returns the unscaled result."""
    import torch

    noise = torch.zeros_like(latent)
    sampler = comfy.samplers.KSAMPLER(sampler_function)
    return comfy.sample.sample_custom(model_patcher, noise, cfg, sampler, sigmas, positive, negative, latent,
                                      disable_pbar=True, seed=seed)


def progress_bar(total: int):
    return comfy.utils.ProgressBar(total)


def throw_if_interrupted():
    comfy.model_management.throw_exception_if_processing_interrupted()
