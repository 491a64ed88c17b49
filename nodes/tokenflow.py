"""STEM TokenFlow Edit: TokenFlow text-driven editing from a STEM (or baseline) inversion trajectory.
The editing loop and its hooks live in stem_core/tokenflow.py."""
import logging

import torch
from torch import nn

from ..stem_core.attention import BaselineAttention, VideoAttentionPatch
from ..stem_core.errors import STEMError
from ..stem_core.inversion import InversionTrajectory
from ..stem_core.memory import tokenflow_store_bytes
from ..stem_core.sites import SD15_KEYS, TOKENFLOW_RESIDUAL_MODULE
from ..stem_core.tokenflow import BLEND_MODES, TokenFlowHooks, TokenFlowSettings, edit_video
from . import host

NEGATIVE_DEFAULT = "ugly, blurry, low res, unrealistic, unaesthetic"


def tokenflow_clone(model, hooks: TokenFlowHooks):
    """A clone carrying the TokenFlow hooks; a STEM/baseline attention patch is left out (as in the authors'
    code, STEM serves the inversion and TokenFlow's own attention the edit)."""
    unet = host.unet_module(model)
    try:
        out_layers = unet.output_blocks[4][0].out_layers
        assert len(unet.output_blocks) == 12 and isinstance(out_layers, nn.Sequential)
    except Exception:
        raise STEMError("STEM TokenFlow Edit needs an SD1.x UNet (12 decoder blocks, a ResBlock at "
                        "output_blocks[4][0]); this model has a different layout", input_name="model") from None
    m = model.clone()
    if host.find_video_attention(m) is not None:
        logging.info("[STEM] TokenFlow Edit: the STEM attention patch serves the inversion only; editing uses "
                     "TokenFlow's keyframe attention")
    topts = host.strip_patches(m, lambda p: isinstance(p, (VideoAttentionPatch, BaselineAttention)))
    topts.pop("stem_video_frames", None)
    host.set_attn1_patch(m, hooks)
    for site in SD15_KEYS:
        host.set_replace(m, "attn1", site, hooks.replace(site))
    # built from the layers' children: correct even if another run's wrapper is still installed
    host.set_object_patch(m, TOKENFLOW_RESIDUAL_MODULE, hooks.residual_layers(out_layers))
    return m


def tokenflow_edit(model, trajectory, positive, negative, source_conditioning, settings: TokenFlowSettings,
                   stats=None):
    """The edit on a TokenFlow clone of ``model`` -> unscaled LATENT samples [frames, 4, h, w]. ``stats`` (a dict)
    receives the peak bytes of the keyframe store, the UNet call counts and the keyframes (benchmarks)."""
    hooks = TokenFlowHooks()
    m = tokenflow_clone(model, hooks)
    host.check_same_schedule(m, trajectory)
    h, w = trajectory.latent_size
    chunk = settings.chunk_size
    pass_frames = max(-(-trajectory.frames // chunk), min(chunk, trajectory.frames))
    scale = host.model_width(m) / 320.0
    host.preflight_sampling(m, "STEM TokenFlow Edit (one UNet pass)", pass_frames, (h, w), groups=settings.groups,
                            extra={"keyframe store": tokenflow_store_bytes(trajectory.frames, (h, w), chunk,
                                                                           settings.groups, scale, SD15_KEYS)})
    device = host.load_for_direct_calls(m, [settings.groups * pass_frames, 4, h, w])
    named = [(source_conditioning, "source_conditioning")] + \
        ([(negative, "negative")] if settings.groups == 3 else []) + [(positive, "positive")]
    embeddings = [e.to(device) for e in host.same_length([host.text_embedding(c, n) for c, n in named])]
    progress = host.Progress(trajectory.steps, model=m)
    apply = host.unet_call(m, m.model_options["transformer_options"], progress)
    with torch.no_grad():
        x = host.run_guarded("STEM TokenFlow Edit", lambda: edit_video(
            apply, trajectory, settings, embeddings, hooks, device, progress,
            host.check_interrupt, stats))
    return host.to_output_latent(m, x)


class STEMTokenFlowEdit:
    TITLE = "STEM TokenFlow Edit"
    CATEGORY = host.category("editing")
    DESCRIPTION = ("TokenFlow text-driven video editing from an inversion trajectory: keyframes denoised jointly "
                   "with extended attention, other frames by nearest-neighbour propagation, plug-and-play "
                   "injection from the source branch. With a STEM trajectory this is STEM-TokenFlow.")
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("edited_latent",)
    OUTPUT_TOOLTIPS = ("The edited video's latents (VAE Decode them).",)
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.5 model used for inversion (a STEM patch on it serves the "
                                           "inversion only; editing runs TokenFlow attention on a clone)."}),
            "trajectory": (host.TRAJECTORY, {"tooltip": "From STEM Invert (STEM or per-frame DDIM inversion). The "
                                                        "edit runs the inversion's DDIM steps."}),
            "positive": ("CONDITIONING", {"tooltip": "The target prompt (what the video should become)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt; TokenFlow uses \"" + NEGATIVE_DEFAULT + "\"."}),
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

    def edit(self, model, trajectory, positive, negative, cfg, pnp_f_t, pnp_attn_t, chunk_size, seed,
             source_conditioning=None, source_latent=None, blend="paper"):
        # The DDIM steps are the inversion's (trajectory.steps). An API prompt of an older version that still
        # sends `steps` validates: ComfyUI passes only the inputs INPUT_TYPES lists.
        host.require_sd15(model, self.TITLE)
        if not isinstance(trajectory, InversionTrajectory):
            raise STEMError("connect the trajectory output of STEM Invert", input_name="trajectory")
        settings = TokenFlowSettings(float(cfg), float(pnp_f_t), float(pnp_attn_t), chunk_size, int(seed),
                                     blend).validated()
        if source_latent is not None:
            samples = host.check_latent(source_latent, "source_latent")
            trajectory.check_matches(frames=int(samples.shape[0]), latent_size=tuple(samples.shape[-2:]),
                                     what=self.TITLE)
        src = source_conditioning if source_conditioning is not None else trajectory.source_conditioning
        if src is None:
            raise STEMError("the trajectory carries no source prompt", input_name="source_conditioning",
                            fix="connect the source prompt's CLIP Text Encode")
        for cond, name in ((src, "source_conditioning"), (positive, "positive"), (negative, "negative")):
            host.check_conditioning(cond, model, name)
        return ({"samples": tokenflow_edit(model, trajectory, positive, negative, src, settings)},)


NODE_CLASS_MAPPINGS = {"STEMTokenFlowEdit": STEMTokenFlowEdit}
