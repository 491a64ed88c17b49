"""STEMTokenFlowEdit: TokenFlow text-driven video editing on top of a STEM (or baseline) inversion.

The node re-runs the source branch on the inverted latents with the source prompt at every step, and
edits with TokenFlow: random keyframes per chunk denoised jointly with extended self-attention, the
other frames filled by nearest-neighbour propagation of the keyframes' self-attention outputs, and
plug-and-play injection of source features. The maths lives in ``stem_core/tokenflow.py``.

Where TokenFlow's hooks sit (authors' diffusers names -> ComfyUI's SD1.x/2.x UNet):

- Residual-feature injection, diffusers ``up_blocks[1].resnets[1]`` (second decoder stage, 1280
  channels, 1/16 of the image size) -> ComfyUI ``output_blocks[4][0]`` (a ResBlock; generally
  ``up_blocks[i].resnets[j] -> output_blocks[3*i + j][0]``). The residual branch (after conv2, before
  the skip connection is added) is that ResBlock's ``out_layers``; we install an object patch on
  ``diffusion_model.output_blocks.4.0.out_layers`` that shares its layers and replaces the edit
  branches' output by the source branch's.
- Query/key injection, diffusers ``up_blocks[1].attentions[1, 2]``, ``up_blocks[2].attentions[0..2]``,
  ``up_blocks[3].attentions[0..2]`` -> ComfyUI attn1 sites ``("output", 4) .. ("output", 11)``
  (``up_blocks[i].attentions[j] -> output_blocks[3*i + j][1]``; ``("output", 3)`` is excluded as in
  TokenFlow: "not in the first block of the lowest resolution").
- Extended keyframe attention and propagation: all 16 attn1 sites (``input`` 1,2,4,5,7,8, ``middle`` 0,
  ``output`` 3..11), through one attn1 pre-projection patch (records the normalised input used for
  nearest neighbours) and 16 attn1 replacements. Everything is installed on a clone; the input MODEL
  is never modified. A STEM attention patch on the incoming MODEL is left out of the clone: as in the
  authors' code, STEM is used for inversion and TokenFlow's own attention for editing.

Memory. Per step the UNet runs one keyframe pass of ``groups * K`` frames (K = ceil(N / chunk_size)
keyframes, groups = 3: source, uncond, cond; 2 when cfg = 1) and then passes of at most
``groups * chunk_size`` frames over the remaining frames. Kept in between: for each of the 16 layers
the keyframes' source features and attention outputs (4 tensors of [K, tokens, channels]; about
90 MB per keyframe for SD1.5 at 512x512 in fp16). Extended attention streams the keyframes' queries
(2 keyframes at a time) against all keyframe keys, so its scores grow like K, not K^2, and nearest
neighbours are scored 1024 tokens at a time. Peak memory therefore is about
``weights + a * N + b * K + c * groups * max(K, chunk_size)``: with the default chunk size 8 it is flat
in the UNet-pass term up to 64 frames and grows linearly (slope ~1/8 of a whole-video batch) beyond,
plus the latents (x, the denoised estimate and the trajectory's N-frame latents, a few MB).
``bench/bench_tokenflow_memory.py`` measures it.
"""
import logging
import math

import torch

import comfy.model_management

from ..stem_core.ddim import ddim_step
from ..stem_core.patch import AttentionReplace, VideoAttentionPatch
from ..stem_core.tokenflow import (BLEND_MODES, QK_INJECTION_SITES, RESIDUAL_INJECTION_MODULE, SD_ATTN1_SITES,
                                   InjectionSchedule, TokenFlowError, TokenFlowHooks, blend_plan,
                                   keyframe_schedule)
from ..stem_core.trajectory import InversionTrajectory, TrajectoryMismatch
from .compat import category, progress_bar, require_sd15, throw_if_interrupted
from .stem_invert import (MAX_STEPS, TRAJECTORY, STEMInputError, check_conditioning, check_latent,
                          check_same_schedule, run_guarded)

NEGATIVE_DEFAULT = "ugly, blurry, low res, unrealistic, unaesthetic"


class TokenFlowInputError(STEMInputError):
    pass


# --------------------------------------------------------------------------------------------------
# model preparation


def _check_unet(model):
    unet = getattr(model.model, "diffusion_model", None)
    blocks = getattr(unet, "output_blocks", None)
    try:
        res = blocks[4][0]
        out_layers = res.out_layers
    except Exception:
        raise TokenFlowInputError("STEM TokenFlow Edit needs an SD1.x/SD2.x UNet (12 decoder blocks, a ResBlock at "
                                  "output_blocks[4][0]); this model has a different layout") from None
    if len(blocks) != 12 or getattr(res, "use_scale_shift_norm", False) or not isinstance(
            out_layers, torch.nn.Sequential):
        raise TokenFlowInputError("STEM TokenFlow Edit supports SD1.x/SD2.x UNets only (12 decoder blocks, "
                                  "ResBlocks without scale-shift norm)")
    return out_layers


def prepare_tokenflow_model(model, hooks: TokenFlowHooks):
    """A clone of `model` carrying the TokenFlow hooks; STEM/baseline attention patches left out."""
    out_layers = _check_unet(model)
    m = model.clone()
    options = dict(m.model_options)
    topts = dict(options.get("transformer_options", {}))
    patches = {k: list(v) for k, v in topts.get("patches", {}).items()}
    replaces = {k: dict(v) for k, v in topts.get("patches_replace", {}).items()}
    before = len(patches.get("attn1_patch", []))
    patches["attn1_patch"] = [p for p in patches.get("attn1_patch", []) if not isinstance(p, VideoAttentionPatch)]
    if "attn1" in replaces:
        replaces["attn1"] = {key: fn for key, fn in replaces["attn1"].items() if not isinstance(fn, AttentionReplace)}
    if len(patches["attn1_patch"]) != before:
        logging.info("[STEM] TokenFlow Edit: the STEM attention patch is used for inversion only; editing uses "
                     "TokenFlow's keyframe attention")
    topts["patches"] = patches
    topts["patches_replace"] = replaces
    topts.pop("stem_video_frames", None)
    options["transformer_options"] = topts
    m.model_options = options
    m.set_model_attn1_patch(hooks)
    for block_name, number in SD_ATTN1_SITES:
        m.set_model_attn1_replace(hooks.replace((block_name, number)), block_name, number, 0)
    # built from the layers' children: correct even if another run's wrapper is still installed
    m.add_object_patch(RESIDUAL_INJECTION_MODULE, hooks.residual_layers(out_layers))
    return m


def _load(m, batch_shape):
    """Load the clone on its device through ComfyUI's model management (same call in 2024 and 2025+)."""
    comfy.model_management.load_models_gpu([m], m.memory_required(list(batch_shape)))
    m.model_patches_to(m.load_device)
    m.model_patches_to(m.model_dtype())


# --------------------------------------------------------------------------------------------------
# conditioning


def _context(conditioning, name):
    if len(conditioning) > 1:
        logging.warning("[STEM] TokenFlow Edit: %s has %d entries; only the first is used (combine prompts "
                        "before encoding instead)", name, len(conditioning))
    return conditioning[0][0]


def _same_length(contexts):
    """Repeat prompt embeddings to a common token count (as ComfyUI does for prompts > 77 tokens)."""
    lengths = [c.shape[1] for c in contexts]
    common = lengths[0]
    for length in lengths[1:]:
        common = common * length // math.gcd(common, length)
    return [c.repeat(1, common // c.shape[1], 1) for c in contexts]


# --------------------------------------------------------------------------------------------------
# the editing loop


def tokenflow_edit(model, trajectory: InversionTrajectory, positive, negative, source_conditioning, cfg: float,
                   pnp_f_t: float, pnp_attn_t: float, chunk_size: int, seed: int, blend: str = "paper",
                   stats: dict | None = None):
    """-> edited latent, unscaled [frames, 4, h, w] on ComfyUI's intermediate device."""
    frames = trajectory.frames
    steps = trajectory.steps
    hooks = TokenFlowHooks()
    m = prepare_tokenflow_model(model, hooks)
    check_same_schedule(m, trajectory)
    schedule = InjectionSchedule(steps, pnp_f_t, pnp_attn_t)
    keyframes = keyframe_schedule(frames, chunk_size, steps, seed)
    groups = 2 if cfg == 1.0 else 3
    h, w = trajectory.latent_size
    pass_frames = max(keyframes.shape[1], min(chunk_size, frames))
    _load(m, [groups * pass_frames, 4, h, w])
    device = m.load_device
    base_topts = m.model_options["transformer_options"]
    contexts = [_context(source_conditioning, "source_conditioning")]
    if groups == 3:
        contexts.append(_context(negative, "negative"))
    contexts.append(_context(positive, "positive"))
    contexts = [c.to(device) for c in _same_length(contexts)]
    cond_or_uncond = [0, 1, 0] if groups == 3 else [0, 0]
    sigmas = trajectory.sampling_sigmas.to(torch.float32)
    bar = progress_bar(steps)

    def unet(frame_idx, x, source, sigma):
        n = len(frame_idx)
        idx = torch.as_tensor(frame_idx, dtype=torch.long, device=device)
        xs = x.index_select(0, idx)
        batch = torch.cat([source.index_select(0, idx)] + [xs] * (groups - 1), dim=0)
        ctx = torch.cat([c.expand(n, -1, -1) for c in contexts], dim=0)
        sig = torch.full((batch.shape[0],), float(sigma), device=device, dtype=torch.float32)
        topts = dict(base_topts)
        topts["cond_or_uncond"] = cond_or_uncond
        topts["sigmas"] = sig
        d = m.model.apply_model(batch, sig, c_crossattn=ctx, transformer_options=topts).float()
        if groups == 2:
            return d[n:]
        d_uncond, d_cond = d[n:2 * n], d[2 * n:]
        return d_uncond + cfg * (d_cond - d_uncond)

    x = trajectory.latents[-1].to(device, torch.float32)
    hooks.start(groups)
    try:
        for i in range(steps):
            throw_if_interrupted()
            sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
            source = trajectory.latent_at_sampling_step(i).to(device, torch.float32)
            kf = keyframes[i].tolist()
            plan = blend_plan(frames, kf, chunk_size, blend)
            hooks.begin_step(schedule.residual(i), schedule.qk(i))
            denoised = torch.empty_like(x)
            hooks.begin_keyframes()
            d_kf = unet(kf, x, source, sigma)
            copied = [f for f in range(frames) if plan.is_copy_of_keyframe(f)]
            for f in copied:
                denoised[f] = d_kf[kf.index(f)]
            rest = [f for f in range(frames) if f not in set(copied)]
            for s in range(0, len(rest), chunk_size):
                throw_if_interrupted()
                part = rest[s:s + chunk_size]
                sel = torch.as_tensor(part, dtype=torch.long)
                hooks.begin_propagation(plan.first[sel], plan.second[sel], plan.weight[sel])
                denoised[torch.as_tensor(part, device=device)] = unet(part, x, source, sigma)
            x = ddim_step(x, denoised, sigma, sigma_next)
            if stats is not None:
                stats["peak_store_bytes"] = max(stats.get("peak_store_bytes", 0), hooks.peak_store_bytes)
            bar.update(1)
    finally:
        if stats is not None:
            stats.update(calls=dict(hooks.calls), keyframes=keyframes.tolist())
        hooks.finish()
    return m.model.process_latent_out(x).to(comfy.model_management.intermediate_device())


# --------------------------------------------------------------------------------------------------
# the node


class STEMTokenFlowEdit:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.x/2.x model used for inversion (a STEM patch on it is used for "
                                           "inversion only; editing runs TokenFlow attention on a clone)."}),
            "trajectory": (TRAJECTORY, {"tooltip": "From STEM Invert (STEM or per-frame DDIM inversion)."}),
            "positive": ("CONDITIONING", {"tooltip": "The target prompt (what the video should become)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt; TokenFlow uses \"" + NEGATIVE_DEFAULT + "\"."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": MAX_STEPS, "tooltip":
                              "DDIM steps; must equal the inversion's steps (paper: 50)."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip":
                              "Classifier-free guidance scale of the edit (paper: 7.5)."}),
            "pnp_f_t": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                  "Fraction of the (noisiest) steps whose decoder residual features "
                                  "(output_blocks[4][0]) are copied from the source branch (TokenFlow: 0.8)."}),
            "pnp_attn_t": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                     "Fraction of the steps whose self-attention queries and keys in decoder "
                                     "layers output_4..11 come from the source branch (TokenFlow: 0.5)."}),
            "chunk_size": ("INT", {"default": 8, "min": 1, "max": 4096, "tooltip":
                                   "One random keyframe per chunk of this many frames at every step; also the "
                                   "frames per UNet pass (bounds memory). TokenFlow: 8."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip":
                             "Seed of the keyframe draws: the same seed gives the same edit."}),
        }, "optional": {
            "source_conditioning": ("CONDITIONING", {"tooltip":
                                    "Source prompt for the source branch; defaults to the inversion's."}),
            "source_latent": ("LATENT", {"tooltip": "The encoded source video: if connected, the node checks that "
                                                    "the trajectory belongs to it (frame count and size)."}),
            "blend": (list(BLEND_MODES), {"default": "paper", "tooltip":
                      "paper: each frame blends its previous and next keyframe linearly by distance. released: "
                      "the authors' code (own and previous chunk's keyframe, sigmoid weights)."}),
        }}

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("edited_latent",)
    OUTPUT_TOOLTIPS = ("The edited video's latents (VAE Decode them).",)
    FUNCTION = "edit"
    CATEGORY = category("editing")
    TITLE = "STEM TokenFlow Edit"
    DESCRIPTION = ("TokenFlow text-driven video editing from an inversion trajectory: keyframes denoised jointly "
                   "with extended attention, other frames by nearest-neighbour propagation, plug-and-play "
                   "injection from the source branch. With a STEM trajectory this is STEM-TokenFlow.")

    def edit(self, model, trajectory, positive, negative, steps, cfg, pnp_f_t, pnp_attn_t, chunk_size, seed,
             source_conditioning=None, source_latent=None, blend="paper"):
        require_sd15(model, self.TITLE)
        if not isinstance(trajectory, InversionTrajectory):
            raise TokenFlowInputError("trajectory: connect the trajectory output of STEM Invert")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise TokenFlowInputError(f"chunk_size must be an integer >= 1 (one keyframe per chunk), got "
                                      f"{chunk_size!r}; TokenFlow uses 8")
        if blend not in BLEND_MODES:
            raise TokenFlowInputError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
        for name, value in (("pnp_f_t", pnp_f_t), ("pnp_attn_t", pnp_attn_t)):
            if not 0.0 <= float(value) <= 1.0:
                raise TokenFlowInputError(f"{name} is a fraction of the steps and must lie in [0, 1], got {value}")
        if not (math.isfinite(float(cfg)) and cfg >= 0):
            raise TokenFlowInputError(f"cfg must be a finite number >= 0, got {cfg}")
        trajectory.check_matches(steps=int(steps), what="STEM TokenFlow Edit")
        if source_latent is not None:
            samples = check_latent(source_latent, "source_latent")
            trajectory.check_matches(frames=int(samples.shape[0]), latent_size=tuple(samples.shape[-2:]),
                                     what="STEM TokenFlow Edit")
        src = source_conditioning if source_conditioning is not None else trajectory.source_conditioning
        if src is None:
            raise TokenFlowInputError("source_conditioning: the trajectory carries no source prompt; connect the "
                                      "source prompt's CLIP Text Encode")
        check_conditioning(src, model, "source_conditioning")
        check_conditioning(positive, model, "positive")
        check_conditioning(negative, model, "negative")
        with torch.no_grad():
            out = run_guarded("STEM TokenFlow Edit", lambda: tokenflow_edit(
                model, trajectory, positive, negative, src, float(cfg), float(pnp_f_t), float(pnp_attn_t),
                int(chunk_size), int(seed), blend))
        return ({"samples": out},)


__all__ = ["STEMTokenFlowEdit", "tokenflow_edit", "prepare_tokenflow_model", "TokenFlowInputError",
           "TrajectoryMismatch", "TokenFlowError", "QK_INJECTION_SITES"]

NODE_CLASS_MAPPINGS = {"STEMTokenFlowEdit": STEMTokenFlowEdit}
