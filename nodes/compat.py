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


# Model config classes of ComfyUI (both hosts) -> the family name users know.
_FAMILIES = {"SD15": "Stable Diffusion 1.x", "SD20": "Stable Diffusion 2.x", "SD21UnclipL": "SD 2.1 unCLIP",
             "SD21UnclipH": "SD 2.1 unCLIP", "SDXL": "SDXL", "SDXLRefiner": "SDXL refiner", "SSD1B": "SDXL (SSD-1B)",
             "Segmind_Vega": "SDXL (Segmind Vega)", "KOALA_700M": "SDXL (KOALA)", "KOALA_1B": "SDXL (KOALA)",
             "SVD_img2vid": "Stable Video Diffusion (img2vid)", "SV3D_u": "SV3D", "SV3D_p": "SV3D",
             "Stable_Zero123": "Stable Zero123", "SD_X4Upscaler": "SD x4 upscaler",
             "Stable_Cascade_C": "Stable Cascade", "Stable_Cascade_B": "Stable Cascade"}


def model_family(model_patcher) -> str:
    """A readable family of a MODEL, e.g. 'SDXL (model config SDXL, eps prediction)'."""
    base = getattr(model_patcher, "model", None)
    config = getattr(base, "model_config", None)
    name = type(config).__name__ if config is not None else type(base).__name__
    prediction = getattr(getattr(base, "model_type", None), "name", None)
    pred = {"EPS": "eps prediction", "V_PREDICTION": "v-prediction", "V_PREDICTION_EDM": "EDM v-prediction"}.get(
        prediction, prediction and prediction.lower())
    return f"{_FAMILIES.get(name, name)} (model config {name}{', ' + pred if pred else ''})"


def is_sd15(model_patcher) -> bool:
    base = getattr(model_patcher, "model", None)
    config = getattr(base, "model_config", None)
    unet = getattr(config, "unet_config", {}) or {}
    return type(config).__name__ == "SD15" and unet.get("in_channels", 4) == 4


def require_sd15(model_patcher, node_title: str, input_name: str = "model"):
    """Refuse a MODEL that is not Stable Diffusion 1.x, naming what was detected and what works."""
    if is_sd15(model_patcher):
        return
    raise ValueError(
        f"{input_name}: {node_title} got a {model_family(model_patcher)} model; it works with Stable Diffusion "
        f"1.x checkpoints (SD1.5 and its fine-tunes: 4-channel latents, 768-wide text encoder, 16 self-attention "
        f"layers). Load an SD1.5 checkpoint such as v1-5-pruned-emaonly.safetensors with Load Checkpoint.")
