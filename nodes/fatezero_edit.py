"""STEM-FateZero: STEMAttentionStore (records the source's attention during STEMInvert) and
STEMFateZeroEdit (FateZero's attention fusion from that store). The maths is in stem_core/fatezero.py;
its docstring defines the step windows and how stored and edited STEM self-attention correspond."""
import logging
import os
import tempfile

import torch

from ..stem_core.ddim import ddim_step
from ..stem_core.fatezero import (AttentionRecorder, AttentionStore, FateZeroError, FusionPatches, FusionSettings,
                                  _FuseCross, _FuseSelf, _RecordAttention, align_prompts, equalizer, find_word,
                                  fused_steps, latent_blend_active, parse_reweight, parse_store_layers,
                                  parse_words)
from ..stem_core.patch import site_name
from ..stem_core.trajectory import InversionTrajectory
from .compat import category, progress_bar, require_sd15, sample_with_function, throw_if_interrupted
from .stem_invert import (MAX_STEPS, TRAJECTORY, check_same_schedule, check_steps, prepare_video_model,
                          run_guarded)
from .stem_patch import find_stem_patch

STORE_KEY = "attention_store"


def _temp_root():
    try:
        import folder_paths
        return os.path.join(folder_paths.get_temp_directory(), "stem_attention")
    except Exception:  # not inside ComfyUI
        return os.path.join(tempfile.gettempdir(), "stem_attention")


def _site_contexts(model, sites):
    """Self-attention context of each site on this MODEL (from its STEM Basis Estimate patch)."""
    patch = find_stem_patch(model)
    if patch is None:
        return {s: "per_frame" for s in sites}, None
    st = patch.settings
    if st.context == "stem" and st.variant == "released":
        raise FateZeroError("FateZero editing needs the paper's STEM variant (variant 'paper' on STEM Basis "
                            "Estimate); the released variant's per-head bases cannot be matched between source "
                            "and edit")
    return {s: (st.context if s in st.layers else "per_frame") for s in sites}, patch


def _strip_pack_patches(model):
    """Remove attention recorders / fusion patches of this pack from a clone (copying the dicts it
    changes), restoring any replace they wrapped."""
    topts = model.model_options.setdefault("transformer_options", {})
    patches = {name: list(lst) for name, lst in topts.get("patches", {}).items()}
    if "attn1_patch" in patches:
        patches["attn1_patch"] = [p for p in patches["attn1_patch"]
                                  if not isinstance(p, (AttentionRecorder, FusionPatches))]
        if not patches["attn1_patch"]:
            del patches["attn1_patch"]
    replaces = {}
    for name, table in topts.get("patches_replace", {}).items():
        new = {}
        for key, fn in table.items():
            if isinstance(fn, (_RecordAttention, _FuseSelf)):
                if fn.wrapped is not None:
                    new[key] = fn.wrapped
            elif not isinstance(fn, _FuseCross):
                new[key] = fn
        replaces[name] = new
    topts["patches"] = patches
    topts["patches_replace"] = replaces
    return topts


def _existing_replace(topts, name, site):
    table = topts.get("patches_replace", {}).get(name, {})
    return table.get((site[0], site[1], 0), table.get((site[0], site[1])))


# ------------------------------------------------------------------------------------------------


class STEMAttentionStore:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model used for inversion (after STEM Basis Estimate, or a plain / "
                                           "two_frame model for FateZero's own inversion). It is cloned."}),
            "layers": ("STRING", {"default": "fatezero", "tooltip":
                "Layers whose attention is stored: 'fatezero' = those with <= 32x32 tokens at 512 px (as "
                "FateZero), 'all', 'encoder', 'decoder', 'middle' or names like input_7, output_3."}),
            "keep": (["cpu", "temp_folder"], {"default": "cpu", "tooltip":
                "Where the maps stay until the edit: CPU RAM, or files in ComfyUI's temp folder (deleted when "
                "the trajectory is dropped)."}),
        }}

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A clone that records cross- and self-attention maps while STEM Invert runs.",)
    FUNCTION = "apply"
    CATEGORY = category("editing")
    TITLE = "STEM Attention Store (for FateZero)"
    DESCRIPTION = ("Connect between STEM Basis Estimate and STEM Invert: the inversion then stores the source's "
                   "attention maps of every step in its trajectory, for STEM FateZero Edit. With STEM attention "
                   "the self-attention maps are HW x K instead of HW x HW.")

    def apply(self, model, layers, keep):
        require_sd15(model, self.TITLE)
        sites = parse_store_layers(layers)
        m = model.clone()
        topts = _strip_pack_patches(m)
        contexts, patch = _site_contexts(m, sites)
        tau = patch.settings.tau if patch is not None else 0.05
        for site in sites:
            if _existing_replace(topts, "attn2", site) is not None:
                raise FateZeroError(f"another node already replaces cross-attention at {site_name(site)}; apply "
                                    f"STEM Attention Store to the model before such nodes")
        recorder = AttentionRecorder(sites, contexts, tau, _temp_root() if keep == "temp_folder" else None)
        m.set_model_attn1_patch(recorder)  # after the STEM patch: it sees the bases as the context
        for site in sites:
            wrapped = _existing_replace(topts, "attn1", site)
            m.set_model_attn1_replace(recorder.self_replace(site, wrapped), site[0], site[1], 0)
            m.set_model_attn2_replace(recorder.cross_replace(site), site[0], site[1], 0)
        return (m,)


# ------------------------------------------------------------------------------------------------


def _tokenize_ids(clip, text, what):
    """Content token ids of the first tokenizer (SD1: 'l') without start/end/padding tokens."""
    tokens = clip.tokenize(text)
    key = "l" if "l" in tokens else next(iter(tokens))
    chunks = tokens[key]
    if len(chunks) > 1:
        raise FateZeroError(f"{what} is longer than 75 tokens; FateZero editing supports one 77-token chunk")
    ids = [t if isinstance(t, int) else -1 for t, *_ in chunks[0]]
    tok = getattr(clip.tokenizer, f"clip_{key}", None)
    end = getattr(tok, "end_token", 49407)
    body = ids[1:] if ids and ids[0] == getattr(tok, "start_token", ids[0]) else ids
    return body[:body.index(end)] if end in body else body


def _encode(clip, text):
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def _positions(clip, prompt_ids, words, prompt, what):
    out = {}
    for word in words:
        pos = find_word(prompt_ids, _tokenize_ids(clip, word, what))
        if not pos:
            raise FateZeroError(f"{what}: '{word}' is not in the {'source' if what == 'blend_words' else 'target'} "
                                f"prompt \"{prompt}\"; use words exactly as they appear there")
        out[word] = pos
    return out


def _get_store(trajectory):
    if not isinstance(trajectory, InversionTrajectory):
        raise FateZeroError("trajectory: connect the trajectory output of STEM Invert")
    store = trajectory.extras.get(STORE_KEY)
    if not isinstance(store, AttentionStore):
        raise FateZeroError("this trajectory has no attention store: insert STEM Attention Store between STEM Basis "
                            "Estimate and STEM Invert, then run the inversion again")
    if store.freed:
        raise FateZeroError("the attention store of this trajectory was freed by a previous edit (release_store). "
                            "Re-run STEM Invert (change one of its inputs) or turn release_store off")
    return store


def edit_video(model, trajectory, store, settings: FusionSettings, positive, negative, cfg, latent_blend):
    """-> (edited unscaled latent [F,4,h,w], mean blend mask [F,8h,8w] or None)."""
    frames, steps = trajectory.frames, trajectory.steps
    m, _ = prepare_video_model(model, frames)
    check_same_schedule(m, trajectory)
    topts = _strip_pack_patches(m)
    sites_self, sites_cross = store.sites("self"), store.sites("cross")
    contexts, patch = _site_contexts(m, sites_self)
    recorded = store.info.get("contexts", {})
    for site in sites_self:
        was = recorded.get(site_name(site), contexts[site])
        if was != contexts[site]:
            raise FateZeroError(f"{site_name(site)} used {was} self-attention for the inversion but the edit model "
                                f"uses {contexts[site]}; connect the same STEM Basis Estimate model as the inversion")
    for site in sites_cross:
        if _existing_replace(topts, "attn2", site) is not None:
            raise FateZeroError(f"another node replaces cross-attention at {site_name(site)}; FateZero needs it")
    sigmas = trajectory.sampling_sigmas
    h, w = trajectory.latent_size
    fusion = FusionPatches(store, settings, sigmas[:-1], (h, w), contexts)
    if patch is not None and any(c == "stem" for c in contexts.values()):
        m.set_model_attn1_patch(fusion)  # after the STEM patch: rebuilds the target's bases
    for site in sites_self:
        m.set_model_attn1_replace(fusion.self_replace(site, _existing_replace(topts, "attn1", site)),
                                  site[0], site[1], 0)
    for site in sites_cross:
        m.set_model_attn2_replace(fusion.cross_replace(site), site[0], site[1], 0)
    bar = progress_bar(steps)
    use_latent_blend = bool(latent_blend) and bool(settings.blend_positions)

    def sampler(model_k, x, sigmas_in, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        s_in = x.new_ones([x.shape[0]])
        for j in range(steps):
            throw_if_interrupted()
            denoised = model_k(x, sigmas_in[j] * s_in, **extra_args)
            x = ddim_step(x, denoised, sigmas_in[j], sigmas_in[j + 1])
            if use_latent_blend and latent_blend_active(j, steps):
                mask = fusion.mask(j, x.shape[-2:], device=x.device).to(x.dtype)
                src = trajectory.latent_at_sampling_step(j + 1).to(x)
                x = src + mask[:, None] * (x - src)
            fusion.record_output_mask(j, (8 * h, 8 * w))
            bar.update(1)
        return x

    try:
        with torch.no_grad():
            out = run_guarded("STEM FateZero edit", lambda: sample_with_function(
                m, sampler, sigmas, positive, negative, float(cfg), trajectory.noisiest_unscaled()))
        mask = None if fusion.mask_sum is None else (fusion.mask_sum / max(1, fusion.mask_count))
    finally:
        fusion.release()
        del m
    return out, mask


class STEMFateZeroEdit:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The same model as the inversion (STEM Basis Estimate output, or the "
                                           "two_frame model for FateZero's own inversion)."}),
            "trajectory": (TRAJECTORY, {"tooltip": "From STEM Invert run on a STEM Attention Store model."}),
            "clip": ("CLIP", {"tooltip": "Encodes the prompts and locates words in their tokens."}),
            "source_prompt": ("STRING", {"multiline": True, "default": "", "tooltip":
                "The prompt used for the inversion (word alignment and blend words are read from it)."}),
            "target_prompt": ("STRING", {"multiline": True, "default": "", "tooltip":
                "The edit. Same token count as the source: words are replaced; otherwise refined (shared words "
                "keep the source's maps)."}),
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
                "Classifier-free guidance of the edit (paper: 7.5)."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": MAX_STEPS, "tooltip":
                "Must equal the inversion's steps (the store holds one map set per step)."}),
        }, "optional": {
            "latent_blend": ("BOOLEAN", {"default": False, "tooltip":
                "Also blend the latents with the inverted source latents outside the mask between 20% and 80% of "
                "the steps (FateZero's LocalBlend). Needs blend words."}),
            "release_store": ("BOOLEAN", {"default": False, "tooltip":
                "Free the stored attention after this edit (saves RAM; a later edit of the same trajectory then "
                "needs a new inversion)."}),
        }}

    RETURN_TYPES = ("LATENT", "MASK", "STRING")
    RETURN_NAMES = ("edited_latent", "blend_mask", "info")
    OUTPUT_TOOLTIPS = ("The edited video latent.",
                       "The blend mask [frames, H, W] (1 = edited region), averaged over the editing steps; all ones "
                       "without blend words.",
                       "Store size in bytes and the fusion settings used.")
    FUNCTION = "edit"
    CATEGORY = category("editing")
    TITLE = "STEM FateZero Edit (attention fusion)"
    DESCRIPTION = ("FateZero's zero-shot editing from the attention stored during STEM inversion: cross-attention "
                   "replace/refine with word alignment, self-attention replacement inside a blend mask, optional "
                   "latent blending. STEM paper defaults: cross [0.2T, T], self [0.5T, T].")

    def edit(self, model, trajectory, clip, source_prompt, target_prompt, blend_words, blend_threshold,
             cross_replace_steps, self_replace_steps, reweight, cfg, steps, latent_blend=False,
             release_store=False):
        require_sd15(model, self.TITLE)
        store = _get_store(trajectory)
        check_steps(steps)
        trajectory.check_matches(steps=int(steps), what="STEM FateZero Edit")
        if store.steps != trajectory.steps or store.frames != trajectory.frames:
            raise FateZeroError("the attention store does not belong to this trajectory; run STEM Invert again")
        if not str(source_prompt).strip() or not str(target_prompt).strip():
            raise FateZeroError("source_prompt and target_prompt must not be empty (the source prompt is the one "
                                "used for the inversion)")
        src_ids = _tokenize_ids(clip, source_prompt, "source_prompt")
        tgt_ids = _tokenize_ids(clip, target_prompt, "target_prompt")
        alignment = align_prompts(src_ids, tgt_ids)
        blend = _positions(clip, src_ids, parse_words(blend_words), source_prompt, "blend_words")
        weights = {}
        for word, wgt in parse_reweight(reweight):
            for pos in _positions(clip, tgt_ids, [word], target_prompt, "reweight")[word]:
                weights[pos] = wgt
        n_steps = trajectory.steps  # the schedule's real step count (ddim_uniform may add one)
        settings = FusionSettings(
            alignment=alignment, cross_steps=fused_steps(cross_replace_steps, n_steps),
            self_steps=fused_steps(self_replace_steps, n_steps),
            blend_positions=tuple(sorted({p for ps in blend.values() for p in ps})),
            blend_threshold=float(blend_threshold), eq=equalizer(weights))
        positive = _encode(clip, target_prompt)
        negative = _encode(clip, "")
        self._warn_source_mismatch(clip, source_prompt, trajectory)
        out, mask = edit_video(model, trajectory, store, settings, positive, negative, cfg, latent_blend)
        h, w = trajectory.latent_size
        if mask is None:
            mask = torch.ones(trajectory.frames, 8 * h, 8 * w)
        info = (f"STEM FateZero edit ({alignment.mode}, {len(src_ids)} -> {len(tgt_ids)} tokens): cross-attention "
                f"fused in steps 0..{settings.cross_steps - 1}, self-attention in 0..{settings.self_steps - 1} of "
                f"{n_steps}; store {store.nbytes()} bytes ({store.nbytes() / 2**20:.2f} MiB: self "
                f"{store.nbytes('self')}, cross {store.nbytes('cross')}, responsibilities {store.nbytes('resp')})")
        if release_store:
            store.free()
            info += "; store released"
        logging.info("[STEM] %s", info)
        return ({"samples": out}, mask.float().cpu(), info)

    @staticmethod
    def _warn_source_mismatch(clip, source_prompt, trajectory):
        src = trajectory.source_conditioning
        try:
            inv = src[0][0]
            now = _encode(clip, source_prompt)[0][0]
            if inv.shape != now.shape or not torch.allclose(inv.float(), now.float(), atol=1e-4):
                logging.warning("[STEM] FateZero: source_prompt differs from the prompt used for the inversion; the "
                                "stored cross-attention belongs to the inversion prompt, so word alignment may be off")
        except Exception:  # conditioning from another encoder: nothing to compare
            pass


NODE_CLASS_MAPPINGS = {"STEMAttentionStore": STEMAttentionStore, "STEMFateZeroEdit": STEMFateZeroEdit}
