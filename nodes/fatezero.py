"""STEM Attention Store (records the source's attention while STEM Invert runs) and STEM FateZero Edit
(FateZero's attention fusion from that store). The maths and the editing loop are in
stem_core/fatezero.py; its docstring defines the step windows and how stored and edited STEM
self-attention correspond."""
import logging

import torch

from ..stem_core.attention import RECORD_RESPONSIBILITIES
from ..stem_core.errors import STEMError
from ..stem_core.fatezero import (AttentionStore, AttentionStoreWriter, FusionPatches, FusionSettings, align_prompts,
                                  check_recorded_windows, differing_words, edit_loop, equalizer, find_word,
                                  fused_steps, parse_reweight, parse_words, site_modes)
from ..stem_core.inversion import InversionTrajectory
from ..stem_core.sites import parse_layers, site_name
from . import host

STORE_KEY = "attention_store"


def _is_fatezero_patch(p) -> bool:
    return isinstance(p, (AttentionStoreWriter, FusionPatches)) or type(p).__module__ == AttentionStoreWriter.__module__


def _video_settings(model):
    patch = host.find_video_attention(model)
    return None if patch is None else patch.settings


class STEMAttentionStore:
    TITLE = "STEM Attention Store (record for FateZero)"
    CATEGORY = host.category("editing")
    DESCRIPTION = ("Connect between STEM Video Attention and STEM Invert: the inversion then stores the source's "
                   "attention maps of every step in its trajectory, for STEM FateZero Edit. With STEM attention "
                   "the self-attention maps are HW x K instead of HW x HW.")
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A clone that records cross- and self-attention maps while STEM Invert runs.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model used for inversion (after STEM Video Attention, or a plain / "
                                           "two_frame model for FateZero's own inversion). It is cloned."}),
            "layers": ("STRING", {"default": "fatezero", "tooltip":
                "Layers whose attention is stored: 'fatezero' = those with <= 32x32 tokens at 512 px (as "
                "FateZero), 'all', 'encoder', 'decoder', 'middle' or names like input_7, output_3."}),
            "keep": (["cpu", "temp_folder"], {"default": "cpu", "tooltip":
                "Where the maps stay until the edit: CPU RAM, or files in ComfyUI's temp folder (deleted when "
                "the trajectory is dropped)."}),
        }, "optional": {
            "self_replace_steps": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                "Record self-attention for this fraction of the (noisiest) editing steps: the most the edit's "
                "self_replace_steps can use (STEM paper: 0.5). Less recorded, less memory."}),
            "cross_replace_steps": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                "Record cross-attention for this fraction of the editing steps: the most the edit's "
                "cross_replace_steps can use (STEM paper: 0.8)."}),
            "blend_masks": ("BOOLEAN", {"default": True, "tooltip":
                "Also record what the blend masks of blend words need (the 16x16 layers' cross-attention in the "
                "self window and in the latent-blend window). Off: smaller store, edits without blend words."}),
        }}

    def apply(self, model, layers, keep, self_replace_steps=0.5, cross_replace_steps=0.8, blend_masks=True):
        host.require_sd15(model, self.TITLE)
        sites = parse_layers(layers)
        m = model.clone()
        host.strip_patches(m, _is_fatezero_patch)
        settings = _video_settings(m)
        for site in sites:
            if host.existing_replace(m, "attn2", site) is not None:
                raise STEMError(f"another node already replaces cross-attention at {site_name(site)}",
                                input_name="model", fix="apply STEM Attention Store to the model before such nodes")
        writer = AttentionStoreWriter(sites, site_modes(settings, sites), settings.tau if settings else 0.05,
                                      host.temp_subfolder("stem_attention") if keep == "temp_folder" else None,
                                      num_bases=settings.num_bases if settings else 256,
                                      self_fraction=self_replace_steps, cross_fraction=cross_replace_steps,
                                      blend_masks=blend_masks)
        host.set_attn1_patch(m, writer)  # after the STEM patch: it receives the bases and responsibilities
        host.set_transformer_option(m, RECORD_RESPONSIBILITIES, tuple(s for s in sites if writer.context_at(s) == "stem"))
        for site in sites:
            host.set_replace(m, "attn1", site, writer.self_replace(site, host.existing_replace(m, "attn1", site)))
            host.set_replace(m, "attn2", site, writer.cross_replace(site))
        return (m,)


def _stored(trajectory) -> AttentionStore:
    if not isinstance(trajectory, InversionTrajectory):
        raise STEMError("connect the trajectory output of STEM Invert", input_name="trajectory")
    store = trajectory.extras.get(STORE_KEY)
    if not isinstance(store, AttentionStore):
        raise STEMError("this trajectory has no attention store", input_name="trajectory",
                        fix="insert STEM Attention Store between STEM Video Attention and STEM Invert, then run the "
                            "inversion again")
    if store.freed:
        raise STEMError("the attention store of this trajectory was freed by a previous edit (release_store)",
                        input_name="trajectory", fix="re-run STEM Invert (change one of its inputs) or turn "
                                                     "release_store off")
    if store.steps != trajectory.steps or store.frames != trajectory.frames:
        raise STEMError("the attention store does not belong to this trajectory", input_name="trajectory",
                        fix="run STEM Invert again")
    return store


def _positions(clip, prompt_ids, words, prompt, what):
    out = {}
    for word in words:
        pos = find_word(prompt_ids, host.prompt_token_ids(clip, word, what))
        if not pos:
            raise STEMError(f"'{word}' is not in the {'source' if what == 'blend_words' else 'target'} prompt "
                            f"\"{prompt}\"", input_name=what, fix="use words exactly as they appear there")
        out[word] = pos
    return out


def fusion_clone(model, trajectory, store, settings: FusionSettings):
    """(clone with the fusion patches, the FusionPatches) for an edit of ``trajectory``."""
    m, _ = host.video_clone(model, trajectory.frames)
    host.check_same_schedule(m, trajectory)
    host.strip_patches(m, _is_fatezero_patch)
    sites_self, sites_cross = store.sites("self"), store.sites("cross")
    modes = site_modes(_video_settings(m), sites_self)
    recorded = store.info.get("contexts", {})
    for site in sites_self:
        was = recorded.get(site_name(site), modes[site])
        if was != modes[site]:
            raise STEMError(f"{site_name(site)} used {was} self-attention for the inversion but the edit model uses "
                            f"{modes[site]}", input_name="model",
                            fix="connect the same STEM Video Attention model as the inversion")
    for site in sites_cross:
        if host.existing_replace(m, "attn2", site) is not None:
            raise STEMError(f"another node replaces cross-attention at {site_name(site)}; FateZero needs it",
                            input_name="model")
    fusion = FusionPatches(store, settings, trajectory.sampling_sigmas[:-1], trajectory.latent_size, modes)
    if any(mode == "stem" for mode in modes.values()):
        host.set_attn1_patch(m, fusion)  # after the STEM patch: rebuilds the target's bases
    for site in sites_self:
        host.set_replace(m, "attn1", site, fusion.self_replace(site, host.existing_replace(m, "attn1", site)))
    for site in sites_cross:
        host.set_replace(m, "attn2", site, fusion.cross_replace(site))
    return m, fusion


class STEMFateZeroEdit:
    TITLE = "STEM FateZero Edit (attention fusion)"
    CATEGORY = host.category("editing")
    DESCRIPTION = ("FateZero's zero-shot editing from the attention stored during STEM inversion: cross-attention "
                   "replace/refine with word alignment, self-attention replacement inside a blend mask, optional "
                   "latent blending. STEM paper defaults: cross [0.2T, T], self [0.5T, T].")
    RETURN_TYPES = ("LATENT", "MASK", "STRING")
    RETURN_NAMES = ("edited_latent", "blend_mask", "info")
    OUTPUT_TOOLTIPS = ("The edited video latent.",
                       "The blend mask [frames, H, W] (1 = edited region), averaged over the editing steps; all ones "
                       "without blend words.",
                       "Store size in bytes and the fusion settings used.")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The same model as the inversion (STEM Video Attention output, or the "
                                           "two_frame model for FateZero's own inversion)."}),
            "trajectory": (host.TRAJECTORY, {"tooltip": "From STEM Invert run on a STEM Attention Store model."}),
            "clip": ("CLIP", {"tooltip": "Encodes the prompts and locates words in their tokens."}),
            "target_prompt": ("STRING", {"multiline": True, "default": "", "tooltip":
                "The edit, compared word by word with the source prompt (the text of the CLIP Text Encode feeding "
                "STEM Invert, which the trajectory carries). Same word count: words are replaced; otherwise "
                "refined (shared words keep the source's maps)."}),
            "blend_words": ("STRING", {"default": "", "tooltip":
                "Source-prompt words of the region to edit (comma separated). Their source cross-attention gives "
                "the blend mask; outside it the source's self-attention is kept. Empty: no mask."}),
            "blend_threshold": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                "Mask = normalised attention of the blend words > threshold (FateZero: 0.2-0.3)."}),
            "cross_replace_steps": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                "Fraction of denoising steps (from the noisiest) whose cross-attention comes from the source. "
                "STEM paper: 0.8 (t in [0.2T, T]); FateZero: 0.5-0.8."}),
            "self_replace_steps": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                "Fraction of denoising steps (from the noisiest) whose self-attention comes from the source. "
                "STEM paper: 0.5 (t in [0.5T, T]); FateZero: 0.6-0.9."}),
            "reweight": ("STRING", {"default": "", "tooltip":
                "Per-word cross-attention weights in the target prompt, e.g. 'red:2.0, hat:0.5'."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                "Classifier-free guidance of the edit (paper: 7.5). The edit runs the inversion's DDIM steps."}),
        }, "optional": {
            # optional (and after the older widgets), so API prompts and workflows of older versions still load
            "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip":
                "What the edit should avoid: the unconditional branch of classifier-free guidance (FateZero uses "
                "an empty prompt)."}),
            "latent_blend": ("BOOLEAN", {"default": False, "tooltip":
                "Also blend the latents with the inverted source latents outside the mask between 20% and 80% of "
                "the steps (FateZero's LocalBlend). Needs blend words."}),
            "release_store": ("BOOLEAN", {"default": False, "tooltip":
                "Free the stored attention after this edit (saves RAM; a later edit of the same trajectory then "
                "needs a new inversion)."}),
            "target_blend_words": ("STRING", {"default": "", "tooltip":
                "Target-prompt words whose attention in the edit widens the latent blend mask (FateZero blends "
                "inside source words OR target words). Empty: the words of the target prompt that are not in the "
                "source prompt."}),
        }}

    def edit(self, model, trajectory, clip, target_prompt, blend_words, blend_threshold, cross_replace_steps,
             self_replace_steps, reweight, cfg, negative_prompt="", latent_blend=False, release_store=False,
             target_blend_words=""):
        host.require_sd15(model, self.TITLE)
        store = _stored(trajectory)
        source_prompt = trajectory.extras.get(host.SOURCE_PROMPT_KEY)
        if not source_prompt:
            raise STEMError("the trajectory does not carry the source prompt's text, which FateZero aligns word by "
                            "word with the target prompt", input_name="trajectory",
                            fix="connect a CLIP Text Encode with the source prompt typed in it (or a Primitive "
                                "string) directly to STEM Invert's source_conditioning, and run the inversion again")
        if not str(target_prompt).strip():
            raise STEMError("must not be empty", input_name="target_prompt", fix="type the edited prompt")
        src_words = host.prompt_word_token_ids(clip, source_prompt, "source_prompt")
        tgt_words = host.prompt_word_token_ids(clip, target_prompt, "target_prompt")
        src_ids, tgt_ids = [t for w in src_words for t in w], [t for w in tgt_words for t in w]
        alignment = align_prompts(src_words, tgt_words)
        blend = _positions(clip, src_ids, parse_words(blend_words), source_prompt, "blend_words")
        weights = {pos: wgt for word, wgt in parse_reweight(reweight)
                   for pos in _positions(clip, tgt_ids, [word], target_prompt, "reweight")[word]}
        target_blend = {}
        if latent_blend:
            chosen = parse_words(target_blend_words) or differing_words(source_prompt, target_prompt)
            target_blend = _positions(clip, tgt_ids, chosen, target_prompt, "target_blend_words")
        n_steps = trajectory.steps  # the schedule's real step count (ddim_uniform may add one)
        settings = FusionSettings(
            alignment=alignment, cross_steps=fused_steps(cross_replace_steps, n_steps),
            self_steps=fused_steps(self_replace_steps, n_steps),
            blend_positions=tuple(sorted({p for ps in blend.values() for p in ps})),
            blend_threshold=float(blend_threshold), eq=equalizer(weights),
            target_blend_positions=tuple(sorted({p for ps in target_blend.values() for p in ps})))
        check_recorded_windows(store, settings, latent_blend)
        m, fusion = fusion_clone(model, trajectory, store, settings)
        host.preflight_sampling(m, self.TITLE, trajectory.frames, trajectory.latent_size, _video_settings(m),
                                groups=1 if float(cfg) == 1.0 else 2)
        progress = host.Progress(n_steps, model=m)
        run = host.sampler_runner(m, host.encode_prompt(clip, target_prompt),
                                  host.encode_prompt(clip, str(negative_prompt or "")), float(cfg), progress=progress)
        try:
            with torch.no_grad():
                out = host.run_guarded(self.TITLE, lambda: run(
                    edit_loop(trajectory, fusion, latent_blend, progress), trajectory.sampling_sigmas,
                    trajectory.noisiest_unscaled()))
            mask = None if fusion.mask_sum is None else (fusion.mask_sum / max(1, fusion.mask_count))
        finally:
            fusion.release()
        h, w = trajectory.latent_size
        if mask is None:
            mask = torch.ones(trajectory.frames, 8 * h, 8 * w)
        info = (f"STEM FateZero edit ({alignment.mode}, {len(src_words)} -> {len(tgt_words)} words, {len(src_ids)} -> "
                f"{len(tgt_ids)} tokens): cross-attention "
                f"fused in steps 0..{settings.cross_steps - 1}, self-attention in 0..{settings.self_steps - 1} of "
                f"{n_steps}; {store.describe()}")
        if release_store:
            store.free()
            info += "; store released"
        logging.info("[STEM] %s", info)
        return ({"samples": out}, mask.float().cpu(), info)


NODE_CLASS_MAPPINGS = {"STEMAttentionStore": STEMAttentionStore, "STEMFateZeroEdit": STEMFateZeroEdit}
