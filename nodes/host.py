"""The one place that knows ComfyUI's internals; every node file goes through it.

- model families (SD1.5 for STEM, SVD img2vid for Videoshop) and their conditioning (SVD: CLIP vision
  embedding, first-frame concat latent, added time ids);
- model options: cloning a MODEL with attention patches, finding and stripping the pack's patches
  (copying the dicts it changes, never editing the input's), the video length the patches check;
- sampling: running a stem_core loop inside ``comfy.sample.sample_custom`` (conditioning, cfg, model
  loading and patches are ComfyUI's own), direct UNet calls for TokenFlow, the ddim_uniform schedule;
- progress and Cancel (ProgressBar, interrupt), out-of-memory conversion, free memory;
- ComfyUI's data types (LATENT, CONDITIONING, CLIP tokens), folders (input, output, temp);
- the pinned 2024-03 host versus current ones (DESIGN.md section 2 of the project notes).
"""
import json
import logging
import math
import os

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths

from ..stem_core.attention import VideoAttentionPatch, install_plan
from ..stem_core.errors import STEMError
from ..stem_core.memory import HEADROOM, check_fits, describe_parts, largest_fitting, sampling_bytes

CATEGORY_ROOT = "STEM video editing"
MAX_STEPS = 1000
TRAJECTORY = "STEM_TRAJECTORY"


def category(sub: str) -> str:
    return f"{CATEGORY_ROOT}/{sub}"


# ------------------------------------------------------------------------------------------------
# model families


# Model config classes of ComfyUI (both hosts) -> the family name users know.
_FAMILIES = {"SD15": "Stable Diffusion 1.x", "SD20": "Stable Diffusion 2.x", "SD21UnclipL": "SD 2.1 unCLIP",
             "SD21UnclipH": "SD 2.1 unCLIP", "SDXL": "SDXL", "SDXLRefiner": "SDXL refiner", "SSD1B": "SDXL (SSD-1B)",
             "Segmind_Vega": "SDXL (Segmind Vega)", "KOALA_700M": "SDXL (KOALA)", "KOALA_1B": "SDXL (KOALA)",
             "SVD_img2vid": "Stable Video Diffusion (img2vid)", "SV3D_u": "SV3D", "SV3D_p": "SV3D",
             "Stable_Zero123": "Stable Zero123", "SD_X4Upscaler": "SD x4 upscaler",
             "Stable_Cascade_C": "Stable Cascade", "Stable_Cascade_B": "Stable Cascade"}


def model_family(model) -> str:
    """A readable family of a MODEL, e.g. 'SDXL (model config SDXL, eps prediction)'."""
    base = getattr(model, "model", None)
    config = getattr(base, "model_config", None)
    name = type(config).__name__ if config is not None else type(base).__name__
    prediction = getattr(getattr(base, "model_type", None), "name", None)
    pred = {"EPS": "eps prediction", "V_PREDICTION": "v-prediction", "V_PREDICTION_EDM": "EDM v-prediction"}.get(
        prediction, prediction and prediction.lower())
    return f"{_FAMILIES.get(name, name)} (model config {name}{', ' + pred if pred else ''})"


def _config_name(model) -> str:
    return type(getattr(getattr(model, "model", None), "model_config", None)).__name__


def require_sd15(model, node_title: str, input_name: str = "model"):
    """Refuse a MODEL that is not Stable Diffusion 1.x, naming what was detected and what works, or one that
    would hand the UNet part of the video at a time (context windows, see refuse_context_windows)."""
    unet = getattr(getattr(getattr(model, "model", None), "model_config", None), "unet_config", {}) or {}
    if _config_name(model) == "SD15" and unet.get("in_channels", 4) == 4:
        refuse_context_windows(model, node_title, input_name)
        return
    raise STEMError(
        f"{node_title} got a {model_family(model)} model; it works with Stable Diffusion 1.x checkpoints (SD1.5 "
        f"and its fine-tunes: 4-channel latents, 768-wide text encoder, 16 self-attention layers)",
        input_name=input_name, fix="load an SD1.5 checkpoint such as v1-5-pruned-emaonly.safetensors with Load "
                                   "Checkpoint")


def require_svd(model, node_title: str, input_name: str = "model"):
    """Refuse a MODEL that is not Stable Video Diffusion img2vid, naming what was detected and what works."""
    base = getattr(model, "model", None)
    if _config_name(model) == "SVD_img2vid" and getattr(getattr(base, "model_type", None), "name", "") == \
            "V_PREDICTION_EDM":
        return
    raise STEMError(
        f"{node_title} got a {model_family(model)} model; it works with Stable Video Diffusion img2vid checkpoints "
        f"(svd.safetensors, 14 frames, or svd_xt.safetensors, 25 frames: v-prediction with EDM sigmas, conditioned "
        f"on a first frame)", input_name=input_name,
        fix="load svd.safetensors with Image Only Checkpoint Loader (img2vid model) and connect its MODEL")


# ------------------------------------------------------------------------------------------------
# the whole video: context windows and VideoHelperSuite meta batches hand nodes part of it

WHOLE_VIDEO_FIX = ("to bound memory instead, load fewer frames (frame_load_cap, select_every_nth) or a smaller size "
                   "(custom_width / custom_height) on STEM Load Video, and set chunk_tokens on STEM Video Attention "
                   "and chunk_size on STEM TokenFlow Edit")


def refuse_context_windows(model, node_title: str, input_name: str = "model"):
    """Current ComfyUI's Context Windows nodes put a ``context_handler`` in the model options: the sampler then
    calls the UNet on windows of context_length frames, so STEM's EM would see one window, not the video."""
    handler = (getattr(model, "model_options", None) or {}).get("context_handler")
    if handler is None:
        return
    length = getattr(handler, "context_length", "?")
    raise STEMError(
        f"{node_title} got a MODEL with ComfyUI context windows ({type(handler).__name__}, {length} frames per "
        f"window): the sampler would give the UNet {length}-frame windows, but STEM estimates its bases (and "
        f"TokenFlow / FateZero their stores) from every frame of the video at once", input_name=input_name,
        fix="remove the Context Windows node from this model's path; " + WHOLE_VIDEO_FIX)


def _is_link(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], int)


def _upstream(prompt: dict, node_id):
    """(id, node) of every node of an API prompt that feeds ``node_id`` directly or indirectly."""
    seen, todo = set(), [str(node_id)]
    while todo:
        nid = todo.pop()
        for value in (prompt.get(nid) or {}).get("inputs", {}).values():
            if _is_link(value) and str(value[0]) not in seen and str(value[0]) in prompt:
                seen.add(str(value[0]))
                todo.append(str(value[0]))
                yield str(value[0]), prompt[str(value[0])]


def refuse_meta_batch(prompt, node_id, node_title: str, input_name: str):
    """Refuse a run that only sees part of the video: a node upstream of ``node_id`` with a ``meta_batch`` input
    connected (VideoHelperSuite's loaders with a Meta Batch Manager) loads frames_per_batch frames per run and
    re-queues the prompt for the rest. Reads the node's hidden PROMPT and UNIQUE_ID (without them nothing is
    checked)."""
    if not isinstance(prompt, dict) or node_id is None:
        return
    for nid, node in _upstream(prompt, node_id):
        batch = (node.get("inputs") or {}).get("meta_batch")
        if _is_link(batch):
            manager = prompt.get(str(batch[0])) or {}
            per_batch = (manager.get("inputs") or {}).get("frames_per_batch", "?")
            raise STEMError(
                f"{node_title} would see {per_batch} frames per run: node {nid} ({node.get('class_type')}) takes a "
                f"meta batch from node {batch[0]} ({manager.get('class_type', '?')}), which splits the video into "
                f"batches and re-queues the workflow for each, but STEM estimates its bases from every frame of the "
                f"video at once", input_name=input_name,
                fix=f"disconnect meta_batch from node {nid} (load the whole clip in one run); " + WHOLE_VIDEO_FIX)


# ------------------------------------------------------------------------------------------------
# the graph a node runs in (hidden PROMPT / UNIQUE_ID inputs)

# The trajectory's extras key of the source prompt's text (see linked_prompt_text).
SOURCE_PROMPT_KEY = "source_prompt"


def _is_link(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], int)


def linked_prompt_text(prompt, node_id, input_name: str):
    """The text behind a CONDITIONING input, read from the API prompt a node receives as hidden PROMPT: the literal
    ``text`` of the node connected to ``input_name`` of node ``node_id`` (CLIP Text Encode; a Primitive's value is
    already inlined there), or, when that text is itself connected, the only string input of the node it comes
    from. None when it cannot be told (no PROMPT, another encoder, several strings)."""
    if not isinstance(prompt, dict) or node_id is None:
        return None
    link = (prompt.get(str(node_id)) or {}).get("inputs", {}).get(input_name)
    if not _is_link(link):
        return None
    text = (prompt.get(str(link[0])) or {}).get("inputs", {}).get("text")
    if _is_link(text):
        strings = [v for v in (prompt.get(str(text[0])) or {}).get("inputs", {}).values() if isinstance(v, str)]
        text = strings[0] if len(strings) == 1 else None
    return text if isinstance(text, str) and text.strip() else None


# ------------------------------------------------------------------------------------------------
# ComfyUI data types


def check_latent(latent, name="latent"):
    """LATENT -> its samples [frames, 4, h, w], refusing what cannot be a video's latents."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not torch.is_tensor(samples) or samples.ndim != 4:
        raise STEMError("expected a LATENT with samples [frames, 4, h, w] (VAE Encode of the video)", input_name=name)
    if samples.shape[0] < 1:
        raise STEMError("the LATENT has no frames", input_name=name)
    if not torch.isfinite(samples).all():
        raise STEMError("the LATENT contains NaN or Inf; re-encode the video with VAE Encode", input_name=name)
    return samples


def check_conditioning(conditioning, model, name):
    if not isinstance(conditioning, list) or not conditioning or not torch.is_tensor(conditioning[0][0]):
        raise STEMError("expected a CONDITIONING (connect a CLIP Text Encode node)", input_name=name)
    expected = getattr(getattr(model.model, "model_config", None), "unet_config", {}).get("context_dim")
    for cond in conditioning:
        t = cond[0]
        if not torch.isfinite(t).all():
            raise STEMError("the conditioning contains NaN or Inf; re-encode the prompt", input_name=name)
        if expected is not None and t.shape[-1] != expected:
            raise STEMError(f"the conditioning has {t.shape[-1]} channels but the model expects {expected}; "
                            f"encode the prompt with this model's CLIP", input_name=name)


def check_svd_conditioning(conditioning, model, name):
    """An SVD CONDITIONING: a CLIP vision embedding of the model's width and a first-frame concat latent."""
    if not isinstance(conditioning, list) or not conditioning or not torch.is_tensor(conditioning[0][0]):
        raise STEMError("expected a CONDITIONING", input_name=name,
                        fix="connect STEM Videoshop Conditioning or SVD_img2vid_Conditioning")
    check_conditioning(conditioning, model, name)
    concat = conditioning[0][1].get("concat_latent_image")
    if not torch.is_tensor(concat) or concat.ndim != 4 or not torch.isfinite(concat).all():
        raise STEMError("has no first-frame latent (concat_latent_image): it is not an image-to-video conditioning",
                        input_name=name, fix="connect STEM Videoshop Conditioning or SVD_img2vid_Conditioning "
                                             "made from the first frame")


def svd_concat(conditioning):
    """The first-frame latent [1, 4, h, w] (unscaled) of an SVD CONDITIONING's first entry."""
    return conditioning[0][1]["concat_latent_image"][:1]


def with_concat(conditioning, concat):
    """A copy of an SVD CONDITIONING whose entries carry ``concat`` [1, 4, h, w] as the first-frame latent."""
    return [[c[0], dict(c[1], concat_latent_image=concat.detach().clone())] for c in conditioning]


def svd_conditioning(image_embeds, concat, fps: int, motion_bucket_id: int, augmentation_level: float):
    """(positive, negative) as SVD_img2vid_Conditioning builds them: image_embeds [1, D] (CLIP vision),
    concat [1, 4, h, w] unscaled; the negative has zero embedding and zero latent, the same added time ids."""
    ids = {"fps": int(fps), "motion_bucket_id": int(motion_bucket_id), "augmentation_level": float(augmentation_level)}
    pooled = image_embeds.unsqueeze(0)
    positive = [[pooled, dict(ids, concat_latent_image=concat)]]
    negative = [[torch.zeros_like(pooled), dict(ids, concat_latent_image=torch.zeros_like(concat))]]
    return positive, negative


def clip_vision_embedding(clip_vision, image):
    """CLIP vision image embedding [B, D] of IMAGE [B, H, W, 3]. The picture is squashed to 224x224 first
    (bilinear, antialiased, as the Videoshop reference prepares it); ComfyUI's own preprocessing would
    resize the short side and centre-crop, and it leaves a 224x224 input as it is."""
    size = 224
    pixels = image[..., :3].movedim(-1, 1).float()
    if tuple(pixels.shape[-2:]) != (size, size):
        pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True,
                                                 align_corners=False)
    return clip_vision.encode_image(pixels.clamp(0, 1).movedim(1, -1)).image_embeds


def vae_encode_mode(vae, pixels):
    """VAE encode of IMAGE-like pixels [B, H, W, 3] (0..1, values outside allowed) -> unscaled latent, using the
    posterior's MODE: the SVD VAE in ComfyUI samples its posterior on every encode (the reference does not)."""
    regularizer = getattr(getattr(vae, "first_stage_model", None), "regularization", None)
    if regularizer is None or not hasattr(regularizer, "sample"):
        return vae.encode(pixels)
    before = regularizer.sample
    regularizer.sample = False
    try:
        return vae.encode(pixels)
    finally:
        regularizer.sample = before


def text_embedding(conditioning, name):
    """The first entry's text embedding [1, tokens, C] of a CONDITIONING (for direct UNet calls)."""
    if len(conditioning) > 1:
        logging.warning("[STEM] %s has %d entries; only the first is used (combine prompts before encoding "
                        "instead)", name, len(conditioning))
    return conditioning[0][0]


def check_steps(steps):
    if not 1 <= int(steps) <= MAX_STEPS:
        raise STEMError(f"must be between 1 and {MAX_STEPS}, got {steps}; the paper uses 50", input_name="steps")


def encode_prompt(clip, text):
    """CONDITIONING of a prompt, as CLIP Text Encode makes it."""
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def prompt_word_token_ids(clip, text, what):
    """The token ids of each space-separated word of a prompt (FateZero and prompt-to-prompt count words by
    ``prompt.split(' ')``); their concatenation is the prompt's content tokens."""
    words = [w for w in str(text).split(" ") if w]
    out = [prompt_token_ids(clip, w, what) for w in words]
    whole = prompt_token_ids(clip, text, what)
    if [t for w in out for t in w] != whole:
        logging.warning("[STEM] %s: tokenizing word by word differs from the whole prompt; word alignment follows "
                        "the words", what)
    return out


def prompt_token_ids(clip, text, what):
    """Content token ids of the first tokenizer (SD1: 'l') without start/end/padding tokens."""
    tokens = clip.tokenize(text)
    key = "l" if "l" in tokens else next(iter(tokens))
    chunks = tokens[key]
    if len(chunks) > 1:
        raise STEMError("is longer than 75 tokens; FateZero editing supports one 77-token chunk", input_name=what)
    ids = [t if isinstance(t, int) else -1 for t, *_ in chunks[0]]
    tok = getattr(clip.tokenizer, f"clip_{key}", None)
    end = getattr(tok, "end_token", 49407)
    body = ids[1:] if ids and ids[0] == getattr(tok, "start_token", ids[0]) else ids
    return body[:body.index(end)] if end in body else body


# ------------------------------------------------------------------------------------------------
# model options and patches


def _transformer_options(model) -> dict:
    return model.model_options.get("transformer_options", {})


def clone_with_video_attention(model, settings):
    """A clone of ``model`` with the video attention patch of ``settings``; ``model`` stays untouched."""
    patch, replaces = install_plan(settings)
    m = model.clone()
    m.set_model_attn1_patch(patch)
    for (block_name, number), fn in replaces.items():
        m.set_model_attn1_replace(fn, block_name, number, 0)
    return m


def find_video_attention(model):
    """The VideoAttentionPatch installed on this MODEL (this clone's own copy), or None."""
    for p in _transformer_options(model).get("patches", {}).get("attn1_patch", []):
        if isinstance(p, VideoAttentionPatch):
            return p
    return None


def video_clone(model, frames: int):
    """(clone, its VideoAttentionPatch or None): the clone knows the video length, so the patches refuse a
    UNet call that holds only part of the video, and starts with a fresh patch state."""
    m = model.clone()
    m.model_options.setdefault("transformer_options", {})["stem_video_frames"] = int(frames)
    patch = find_video_attention(m)
    if patch is not None:
        patch.reset()
    return m, patch


def all_patch_objects(model) -> list:
    """Every distinct patch object on a MODEL (attn patches and replaces)."""
    topts = _transformer_options(model)
    found = [p for group in topts.get("patches", {}).values() for p in group]
    found += [p for group in topts.get("patches_replace", {}).values() for p in group.values()]
    return list({id(p): p for p in found}.values())


def strip_patches(model, drop) -> dict:
    """Remove the patch objects for which ``drop(obj)`` is true from a clone's transformer_options, copying
    every dict and list it changes (never the input model's). An object with a ``wrapped`` replace gives
    that back. Returns the clone's new transformer_options."""
    topts = dict(_transformer_options(model))
    patches = {name: [p for p in lst if not drop(p)] for name, lst in topts.get("patches", {}).items()}
    replaces = {}
    for name, table in topts.get("patches_replace", {}).items():
        new = {}
        for key, fn in table.items():
            if not drop(fn):
                new[key] = fn
            elif getattr(fn, "wrapped", None) is not None:
                new[key] = fn.wrapped
        replaces[name] = new
    topts["patches"] = {k: v for k, v in patches.items() if v}
    topts["patches_replace"] = replaces
    model.model_options = dict(model.model_options, transformer_options=topts)
    return topts


def existing_replace(model, kind, site):
    """The attn1/attn2 replace another node installed at a site, or None."""
    table = _transformer_options(model).get("patches_replace", {}).get(kind, {})
    return table.get((site[0], site[1], 0), table.get((site[0], site[1])))


def set_attn1_patch(model, fn):
    model.set_model_attn1_patch(fn)


def set_replace(model, kind, site, fn):
    setter = model.set_model_attn1_replace if kind == "attn1" else model.set_model_attn2_replace
    setter(fn, site[0], site[1], 0)


def set_transformer_option(model, key, value):
    """A plain entry of a clone's transformer_options (ComfyUI hands them to every attention patch)."""
    model.model_options.setdefault("transformer_options", {})[key] = value


def set_object_patch(model, name, obj):
    model.add_object_patch(name, obj)


def unet_module(model):
    return getattr(model.model, "diffusion_model", None)


# ------------------------------------------------------------------------------------------------
# schedules and sampling


def model_sampling(model):
    """The ModelSampling object (sigmas, timestep conversion) of a MODEL."""
    getter = getattr(model, "get_model_object", None)
    if getter is not None:
        try:
            return getter("model_sampling")
        except Exception:  # older patchers raise on unknown names
            pass
    return model.model.model_sampling


def scheduler_sigmas(model, scheduler: str, steps: int):
    """ComfyUI's named schedule of a MODEL (e.g. ddim_uniform, karras): descending sigmas [steps + 1] ending in 0,
    on the CPU; calculate_sigmas in current hosts, calculate_sigmas_scheduler in the pinned one."""
    if hasattr(comfy.samplers, "calculate_sigmas"):
        try:
            return comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, steps).cpu()
        except TypeError:
            pass
    return comfy.samplers.calculate_sigmas_scheduler(model.model, scheduler, steps).cpu()


def ddim_sigmas(model, steps: int):
    """ComfyUI's ddim_uniform schedule: descending sigmas [steps + 1] ending in 0, on the CPU."""
    return scheduler_sigmas(model, "ddim_uniform", steps)


def latent_scale(model) -> float:
    return float(model.model.latent_format.scale_factor)


def karras_sigmas(model, steps: int):
    """ComfyUI's karras schedule of a MODEL: descending sigmas [steps + 1] ending in 0, on the CPU (for SVD
    the reference's schedule: sigma 700 down to 0.002, rho 7)."""
    return scheduler_sigmas(model, "karras", steps)


def without_cfg_function_at_cfg1(model, cfg: float):
    """At cfg 1 ComfyUI skips the negative and hands a model's sampler_cfg_function (e.g. Video Linear CFG
    Guidance) a zero prediction in its place; drop the function on a clone so that cfg 1 means no guidance.
    Returns (model or clone, whether one was dropped)."""
    if not math.isclose(float(cfg), 1.0) or "sampler_cfg_function" not in model.model_options:
        return model, False
    m = model.clone()
    m.model_options = {k: v for k, v in m.model_options.items() if k != "sampler_cfg_function"}
    return m, True


def check_same_schedule(model, trajectory):
    sigmas = ddim_sigmas(model, trajectory.user_steps)
    if sigmas.shape != trajectory.sampling_sigmas.shape or not torch.allclose(
            sigmas.float(), trajectory.sampling_sigmas.float(), rtol=1e-4, atol=1e-6):
        raise STEMError("the model's noise schedule differs from the one used for inversion; use the same model "
                        "family for inversion and reconstruction/editing", input_name="model")


def sampler_runner(model, positive, negative, cfg: float, seed: int = 0, progress=None):
    """run(loop, sigmas, latent) for stem_core's drivers: runs ``loop(denoise, x, sigmas)`` through
    ``comfy.sample.sample_custom`` (conditioning, cfg, model loading, patches are ComfyUI's own). ``latent``
    is unscaled [B, 4, h, w]; the noise is zero, so the loop starts from the latent itself. Returns the
    unscaled result. Each denoised prediction [frames, 4, h, w] goes to ``progress.show`` (a Progress made with
    the model) for the latent preview."""
    def run(loop, sigmas, latent):
        def sampler_function(model_k, x, sigmas_in, extra_args=None, callback=None, disable=None):
            extra_args = extra_args or {}
            s_in = x.new_ones([x.shape[0]])

            def denoise(xx, s):
                denoised = model_k(xx, s * s_in, **extra_args)
                if progress is not None:
                    progress.show(denoised)
                return denoised
            return loop(denoise, x, sigmas_in)

        sampler = comfy.samplers.KSAMPLER(sampler_function)
        return comfy.sample.sample_custom(model, torch.zeros_like(latent), cfg, sampler, sigmas, positive, negative,
                                          latent, disable_pbar=True, seed=seed)
    return run


def load_for_direct_calls(model, batch_shape):
    """Load a clone on its device through ComfyUI's model management (same call in 2024 and 2025+), for
    loops that call the UNet themselves; returns the device."""
    comfy.model_management.load_models_gpu([model], model.memory_required(list(batch_shape)))
    model.model_patches_to(model.load_device)
    model.model_patches_to(model.model_dtype())
    return model.load_device


def unet_call(model, transformer_options, progress=None):
    """apply(batch [B, 4, h, w], sigma float, text [B, tokens, C], cond_or_uncond list) -> denoised float32:
    a direct UNet call with the clone's patches (TokenFlow batches source and edit branches itself). The first
    row of the last branch (an edited frame, TokenFlow's batch order) goes to ``progress.show`` for the preview."""
    device = model.load_device

    def apply(batch, sigma, text, cond_or_uncond):
        sig = torch.full((batch.shape[0],), float(sigma), device=device, dtype=torch.float32)
        topts = dict(transformer_options, cond_or_uncond=cond_or_uncond, sigmas=sig)
        denoised = model.model.apply_model(batch, sig, c_crossattn=text, transformer_options=topts).float()
        if progress is not None:
            first_edited = (len(cond_or_uncond) - 1) * (batch.shape[0] // max(1, len(cond_or_uncond)))
            progress.show(denoised[first_edited:first_edited + 1])
        return denoised
    return apply


def to_intermediate(x):
    """A tensor on ComfyUI's intermediate device (where LATENT outputs live)."""
    return x.to(comfy.model_management.intermediate_device())


def to_output_latent(model, x_scaled):
    """A sampler-space latent -> unscaled LATENT samples on ComfyUI's intermediate device."""
    return model.model.process_latent_out(x_scaled).to(comfy.model_management.intermediate_device())


# ------------------------------------------------------------------------------------------------
# progress, Cancel, memory


def check_interrupt():
    comfy.model_management.throw_exception_if_processing_interrupted()


class Progress:
    """on_step(i, total) for stem_core loops: honours Cancel, then advances ComfyUI's progress bar by one step
    (the browser's bar on the running node). Made with ``model``, every step also goes through ComfyUI's own
    ``latent_preview.prepare_callback`` with the first denoised prediction handed to ``show`` since the last step
    (sampler space [B, 4, h, w]; item 0 is previewed), so the node shows latent previews as core samplers do
    (TAESD or latent2rgb, as --preview-method chooses; nothing extra when previews are off)."""

    def __init__(self, total: int, model=None):
        self.total = max(1, int(total))
        self.done = 0
        self.bar = comfy.utils.ProgressBar(self.total)
        self.preview = None
        self.latest = None
        if model is not None:
            try:
                import latent_preview
                self.preview = latent_preview.prepare_callback(model, self.total)
            except Exception as exc:  # a preview must never break a run
                logging.warning("[STEM] latent previews unavailable: %s", exc)

    def show(self, denoised):
        if self.preview is not None and self.latest is None:
            self.latest = denoised[:1].detach()

    def __call__(self, i=None, total=None):
        check_interrupt()
        self.done = min(self.total, self.done + 1)
        latest, self.latest = self.latest, None
        if latest is not None:
            try:
                self.preview(self.done - 1, latest, None, self.total)  # sends progress + preview image
                return
            except Exception as exc:
                if isinstance(exc, comfy.model_management.InterruptProcessingException):
                    raise
                logging.warning("[STEM] latent preview failed, previews off for this node: %s", exc)
                self.preview = None
        self.bar.update_absolute(self.done, self.total)


def run_guarded(what: str, fn, settings_hint: str = ""):
    """Turns allocation failures into an actionable message; everything else passes through."""
    message = (f"{what} ran out of memory. Use fewer frames (frame_load_cap / select_every_nth on the loader), a "
               f"smaller size (custom_width/height), fewer bases, or set chunk_tokens on STEM Video Attention to "
               f"bound EM memory{settings_hint}.")
    try:
        return fn()
    except torch.OutOfMemoryError as exc:  # CUDA
        raise STEMError(message) from exc
    except RuntimeError as exc:
        text = str(exc)
        if "out of memory" in text or "DefaultCPUAllocator" in text or "can't allocate memory" in text:
            raise STEMError(message) from exc
        raise


def free_memory_bytes(device=None) -> int:
    """Free memory of a device as ComfyUI sees it (RAM for the CPU)."""
    return int(comfy.model_management.get_free_memory(device or comfy.model_management.get_torch_device()))


def cpu_device():
    return torch.device("cpu")


def model_width(model) -> int:
    unet = getattr(getattr(model.model, "model_config", None), "unet_config", {}) or {}
    return int(unet.get("model_channels", 320))


def model_dtype(model) -> torch.dtype:
    try:
        return model.model_dtype()
    except Exception:
        return torch.float32


def model_itemsize(model) -> int:
    return torch.empty((), dtype=model_dtype(model)).element_size()


def preflight_sampling(model, what: str, frames: int, latent_hw, settings=None, groups: int = 1,
                       extra: dict | None = None):
    """Refuse before sampling when the UNet calls over the whole video, STEM's EM and the attention of the largest
    layer (stem_core.memory.sampling_bytes), plus ``extra`` parts, do not fit in the free memory of ComfyUI's
    device; the message gives the parts, the limit and the frame count that fits."""
    mode = settings.mode if settings is not None else "per_frame"
    num_bases = settings.num_bases if settings is not None else 256
    chunk = settings.chunk_tokens if settings is not None else None
    width, itemsize = model_width(model), model_itemsize(model)

    def total(n):
        parts = sampling_bytes(n, latent_hw, mode, num_bases, width, groups, chunk, itemsize)
        return sum(parts.values()) + sum((extra or {}).values()) * n // max(frames, 1)

    parts = dict(sampling_bytes(frames, latent_hw, mode, num_bases, width, groups, chunk, itemsize), **(extra or {}))
    available = free_memory_bytes()
    fits = largest_fitting(frames, total, int(available * HEADROOM))
    h, w = (int(v) * 8 for v in latent_hw)
    check_fits(sum(parts.values()), available, f"{what} of {frames} frames of {w}x{h} px ({describe_parts(parts)})",
               f"use at most {fits} frames (frame_load_cap / select_every_nth on the loader) or a smaller size "
               f"(custom_width / custom_height){'; chunk_tokens on STEM Video Attention bounds EM' if mode == 'stem' else ''}")


# ------------------------------------------------------------------------------------------------
# folders


def input_dir() -> str:
    return folder_paths.get_input_directory()


def temp_subfolder(name: str) -> str:
    return os.path.join(folder_paths.get_temp_directory(), name)


def _new_file(root: str, prefix: str, width: int, height: int):
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, root, width, height)
    os.makedirs(folder, exist_ok=True)
    return folder, f"{name}_{counter:05}", subfolder


def output_path(prefix: str, width: int = 0, height: int = 0):
    """(folder, base name without extension, subfolder) for a new output file under ComfyUI's output folder."""
    return _new_file(folder_paths.get_output_directory(), prefix, width, height)


def temp_path(prefix: str):
    """(folder, base name without extension, subfolder) for a preview file in ComfyUI's temp folder (served as
    type "temp", emptied at every start)."""
    return _new_file(folder_paths.get_temp_directory(), prefix, 0, 0)


def workflow_metadata(prompt, extra_pnginfo) -> dict:
    """The prompt and the workflow a node receives through its hidden PROMPT / EXTRA_PNGINFO inputs, as JSON text
    by key ({"prompt": ..., "workflow": ...}), the way core save nodes embed them; empty when ComfyUI runs with
    --disable-metadata."""
    from comfy.cli_args import args
    if getattr(args, "disable_metadata", False):
        return {}
    out = {}
    if prompt is not None:
        out["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        out[str(key)] = json.dumps(value)
    return out


def same_length(embeddings):
    """Repeat prompt embeddings to a common token count (as ComfyUI does for prompts > 77 tokens)."""
    lengths = [c.shape[1] for c in embeddings]
    common = lengths[0]
    for length in lengths[1:]:
        common = common * length // math.gcd(common, length)
    return [c.repeat(1, common // c.shape[1], 1) for c in embeddings]
