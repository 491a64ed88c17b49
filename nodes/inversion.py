"""STEM Video Attention (id STEMBasisEstimate), STEM Invert and STEM Reconstruct."""
import logging

import torch

from ..stem_core.attention import MODES, VARIANTS, VideoAttentionSettings
from ..stem_core.errors import STEMError
from ..stem_core.inversion import InversionTrajectory, invert_video, reconstruct_video
from ..stem_core.memory import trajectory_bytes
from ..stem_core.sites import parse_layers
from . import host

REPLAY, RE_ESTIMATE = "replay inversion bases", "re-estimate bases"


class STEMBasisEstimate:
    TITLE = "STEM Video Attention (EM bases of the whole video)"
    CATEGORY = host.category("inversion")
    DESCRIPTION = ("Makes every self-attention layer of a model clone read a whole-video context: STEM bases "
                   "(estimated by EM over all frames at every UNet call) or a baseline.")
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A patched clone: the chosen self-attention layers read a whole-video context.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.5 model. It is cloned; the input stays unpatched."}),
            "attention_context": (list(MODES), {"default": "stem", "tooltip":
                "stem: every frame attends to K bases estimated by EM over ALL frames (the paper). "
                "per_frame: plain per-frame DDIM. two_frame: FateZero's spatio-temporal attention. "
                "all_frame: extended attention over every frame (slow, memory O(N^2))."}),
            "num_bases": ("INT", {"default": 256, "min": 1, "max": 4096, "tooltip":
                "K, the number of bases of the whole video (paper: 256; 128 is faster, 512 barely better)."}),
            "iterations": ("INT", {"default": 3, "min": 0, "max": 50, "tooltip":
                "R, EM iterations per layer and step (paper: 3). With warm start 1-2 are often enough."}),
            "tau": ("FLOAT", {"default": 0.05, "min": 1e-4, "max": 10.0, "step": 0.001, "tooltip":
                "Temperature of the E-step softmax (paper: 0.05; towards 0 it becomes k-means)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip":
                "Seed of the bases' initialisation: the same seed gives the same bases."}),
            "variant": (list(VARIANTS), {"default": "paper", "tooltip":
                "paper: EM on the layer input X of all frames (Eq. 8-11). released: the authors' code, EM per "
                "head on the projected keys of each 8-frame batch, always with its tau 0.01 and 5 iterations "
                "(the tau and iterations widgets apply to the paper variant)."}),
            "layers": ("STRING", {"default": "all", "tooltip":
                "Which of the 16 self-attention layers use the video context: all, encoder, middle, decoder, "
                "or names like input_1, output_11 (comma separated)."}),
            "warm_start": ("BOOLEAN", {"default": False, "tooltip":
                "Start each layer's EM from its bases of the previous step of the same run. Off by default: on "
                "test features warm bases drifted from the cold fixed point (bench/README.md); on with iterations 1 "
                "is the fast setting."}),
            "init": (["tokens", "gaussian"], {"default": "tokens", "tooltip":
                "tokens: K distinct tokens of the video (seeded). gaussian: draws from the features' "
                "per-channel statistics (released-code style)."}),
            "chunk_tokens": ("INT", {"default": 0, "min": 0, "max": 1 << 24, "tooltip":
                "Tokens per EM chunk (0 = automatic). Chunking bounds memory for long videos; results are "
                "the same."}),
        }, "optional": {
            "normalize": ("BOOLEAN", {"default": False, "tooltip":
                "Paper variant: run the E-step on L2-normalised features and bases (cosine similarity / tau). "
                "Off as in the paper (Eq. 8-9 use raw dot products)."}),
        }}

    def patch(self, model, attention_context, num_bases, iterations, tau, seed, variant, layers, warm_start,
              init, chunk_tokens, normalize=False):
        host.require_sd15(model, self.TITLE)
        settings = VideoAttentionSettings(mode=attention_context, variant=variant, num_bases=num_bases,
                                          iterations=iterations, tau=tau, seed=seed, init=init, warm_start=warm_start,
                                          chunk_tokens=chunk_tokens or None, layers=parse_layers(layers),
                                          normalize=bool(normalize))
        return (host.clone_with_video_attention(model, settings),)


class STEMInvert:
    TITLE = "STEM Invert (DDIM inversion of the video)"
    CATEGORY = host.category("inversion")
    DESCRIPTION = ("Deterministic DDIM inversion of every frame with the source prompt and no CFG; with STEM "
                   "attention each frame reads keys and values from bases of the whole video.")
    RETURN_TYPES = ("LATENT", host.TRAJECTORY, "STRING")
    RETURN_NAMES = ("inverted_latent", "trajectory", "info")
    OUTPUT_TOOLTIPS = ("x_T: the noisiest latent, ready for KSamplerAdvanced (add_noise off) or our nodes.",
                       "Every inverted latent, the schedule and the settings, for reconstruction and editing.",
                       "A one-line description of the inversion.")
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model with STEM attention (STEM Video Attention) or a plain model "
                                           "for per-frame DDIM inversion."}),
            "latent": ("LATENT", {"tooltip": "All frames of the video (VAE Encode of STEM Load Video)."}),
            "source_conditioning": ("CONDITIONING", {"tooltip": "The source prompt describing the video."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": host.MAX_STEPS, "tooltip":
                              "DDIM steps (paper: 50). Reconstruction and editing follow the inversion's steps."}),
        }, "optional": {
            "extrapolate": ("BOOLEAN", {"default": False, "tooltip":
                "Videoshop's noise extrapolation: while sigma > 1 the model sees the next latent guessed on the "
                "straight line from the clean latent, z + (x - z) * sigma_next / sigma, instead of the current one; "
                "plain DDIM below. No extra model calls. Off by default: the STEM paper, FateZero and TokenFlow "
                "invert with plain DDIM, and the measurements disagree on which is better (bench/README.md: ~5x "
                "lower round-trip error on the random-weight tiny model; 1.06x higher on analytic Gaussian data "
                "of std 0.5, far higher at std 1, where plain DDIM's guess is nearly on the path). Try it on when "
                "reconstruction drifts at few steps."}),
        }, "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}

    def invert(self, model, latent, source_conditioning, steps, extrapolate=False, prompt=None, unique_id=None):
        host.require_sd15(model, self.TITLE)
        host.refuse_meta_batch(prompt, unique_id, self.TITLE, "latent")
        samples = host.check_latent(latent)
        host.check_conditioning(source_conditioning, model, "source_conditioning")
        host.check_steps(steps)
        m, patch = host.video_clone(model, samples.shape[0])
        latent_hw = tuple(samples.shape[-2:])
        host.preflight_sampling(m, "STEM inversion", samples.shape[0], latent_hw, patch and patch.settings,
                                extra={"trajectory": trajectory_bytes(samples.shape[0], latent_hw, int(steps),
                                                                      host.model_itemsize(m))})
        hooks = [p for p in host.all_patch_objects(m) if hasattr(p, "begin_inversion")]
        settings = dict(vars(patch.settings), tau=patch.settings.effective_tau,
                        iterations=patch.settings.effective_iterations) if patch is not None else {"mode": "per_frame"}
        settings["layers"] = [f"{a}_{b}" for a, b in settings.get("layers", ())]
        progress = host.Progress(steps, model=m)
        run = host.sampler_runner(m, source_conditioning, source_conditioning, 1.0, progress=progress)
        with torch.no_grad():
            out, traj = host.run_guarded("STEM inversion", lambda: invert_video(
                run, samples, host.ddim_sigmas(m, int(steps)), host.latent_scale(m), patch, hooks,
                progress, requested_steps=int(steps), settings=settings,
                source_conditioning=source_conditioning, store_dtype=host.model_dtype(m),
                extrapolate=bool(extrapolate)))
        # the source prompt's words, for editing methods that align prompts (FateZero): typed once, in the CLIP
        # Text Encode feeding source_conditioning, and read from the graph ComfyUI hands this node
        traj.extras[host.SOURCE_PROMPT_KEY] = host.linked_prompt_text(prompt, unique_id, "source_conditioning")
        logging.info("[STEM] %s", traj.describe())
        return ({"samples": out}, traj, traj.describe())


class STEMReconstruct:
    TITLE = "STEM Reconstruct (DDIM sampling)"
    CATEGORY = host.category("inversion")
    DESCRIPTION = ("Deterministic DDIM sampling from the inverted latent with the inversion's schedule. Equal to "
                   "KSamplerAdvanced with add_noise off, euler, ddim_uniform and cfg 1.")
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("reconstruction",)
    OUTPUT_TOOLTIPS = ("The video sampled back from x_T with deterministic DDIM (cfg 1).",)
    FUNCTION = "reconstruct"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "Usually the same (patched) model used for inversion."}),
            "trajectory": (host.TRAJECTORY, {"tooltip": "From STEM Invert."}),
            "bases": ([REPLAY, RE_ESTIMATE], {"default": REPLAY, "tooltip":
                "With STEM attention: replay the bases the inversion estimated at each step (the reconstruction "
                "then reads exactly the inversion's video context), or run EM again on the sampled features."}),
        }, "optional": {
            "conditioning": ("CONDITIONING", {"tooltip": "Defaults to the source prompt used for inversion."}),
        }}

    def reconstruct(self, model, trajectory, bases=REPLAY, conditioning=None):
        host.require_sd15(model, self.TITLE)
        if not isinstance(trajectory, InversionTrajectory):
            raise STEMError("connect the trajectory output of STEM Invert", input_name="trajectory")
        if bases not in (REPLAY, RE_ESTIMATE):
            raise STEMError(f"must be '{REPLAY}' or '{RE_ESTIMATE}', got '{bases}'", input_name="bases")
        cond = conditioning if conditioning is not None else trajectory.source_conditioning
        host.check_conditioning(cond, model, "conditioning")
        m, patch = host.video_clone(model, trajectory.frames)
        host.check_same_schedule(m, trajectory)
        host.preflight_sampling(m, "STEM reconstruction", trajectory.frames, trajectory.latent_size,
                                patch and patch.settings)
        progress = host.Progress(trajectory.steps, model=m)
        run = host.sampler_runner(m, cond, cond, 1.0, progress=progress)
        with torch.no_grad():
            out = host.run_guarded("STEM reconstruction", lambda: reconstruct_video(
                run, trajectory, patch, bases == REPLAY, progress))
        return ({"samples": out},)


NODE_CLASS_MAPPINGS = {"STEMBasisEstimate": STEMBasisEstimate, "STEMInvert": STEMInvert,
                       "STEMReconstruct": STEMReconstruct}
