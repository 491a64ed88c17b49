"""Videoshop: STEM Videoshop Conditioning, STEM Videoshop Invert, STEM Videoshop Edit and STEM Match Latent
Statistics. They take Stable Video Diffusion img2vid models (Image Only Checkpoint Loader) and work with
ComfyUI's own SVD nodes (SVD_img2vid_Conditioning, VideoLinearCFGGuidance). The maths is in
stem_core/videoshop.py; defaults are the reference's (sfanxiang/videoshop run.py)."""
import logging

import torch

from ..stem_core import videoshop as vs
from ..stem_core.errors import STEMError
from . import host

TRAJECTORY = "STEM_VIDEOSHOP_TRAJECTORY"
RAW_CONCAT, NORMALIZED_CONCAT = "raw (reference)", "normalized like the inversion"


def _first_frame_latent(conditioning, latent_size, name, notes):
    """The conditioning's first-frame latent [1, 4, h, w], resized (with a note) when it was made at another
    size than the video's; ComfyUI would resize it silently."""
    concat = host.svd_concat(conditioning).float()
    h, w = latent_size
    if tuple(concat.shape[-2:]) != (h, w):
        notes.append(f"warning: {name} was made at {concat.shape[-1] * 8}x{concat.shape[-2] * 8} but the video is "
                     f"{w * 8}x{h * 8}; its first-frame latent was resized (build the conditioning at the video's "
                     f"size to avoid the distortion)")
        concat = torch.nn.functional.interpolate(concat, size=(h, w), mode="bilinear", align_corners=False)
    return concat


def _window_runs(model, positive, negative, cfg, progress):
    """run_for(window, concat) for stem_core.videoshop: the host's sampler with ``concat`` as first frame; its
    predictions go to ``progress`` (host.Progress) for the latent previews."""
    def run_for(window, concat):
        return host.sampler_runner(model, host.with_concat(positive, concat), negative, cfg, progress=progress)
    return run_for


def _report(title, text, notes):
    info = "\n".join([text] + notes)
    for note in notes:
        logging.warning("[STEM] %s: %s", title, note)
    return info


class STEMVideoshopConditioning:
    TITLE = "STEM Videoshop Conditioning (first frame for SVD)"
    CATEGORY = host.category("videoshop")
    DESCRIPTION = ("The SVD conditioning of a first frame as the Videoshop reference builds it: CLIP vision embedding "
                   "of the frame squashed to 224x224, and its latent at the video's size after noise augmentation "
                   "(posterior mode). Use it on the original first frame (for Videoshop Invert) and on the edited "
                   "one (for Videoshop Edit).")
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT", "STRING")
    RETURN_NAMES = ("positive", "negative", "latent", "info")
    OUTPUT_TOOLTIPS = ("CLIP vision embedding + noise-augmented first-frame latent + added time ids.",
                       "Zero embedding and zero latent with the same time ids (the unconditional branch).",
                       "The frame's clean latent at the video's size (Videoshop Edit rescales to its statistics).",
                       "What was done, with a warning when the frame had to be resized.")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "From Image Only Checkpoint Loader (SVD)."}),
            "vae": ("VAE", {"tooltip": "From Image Only Checkpoint Loader (SVD)."}),
            "image": ("IMAGE", {"tooltip": "The first frame: the original one (inversion) or your edited one (edit). "
                                           "Only the first image of a batch is used."}),
            "video_latent": ("LATENT", {"tooltip": "The video's latent (VAE Encode of the frames): the frame is "
                                                   "resized to its size."}),
            "noise_aug_strength": ("FLOAT", {"default": vs.DEFAULT_NOISE_AUG, "min": 0.0, "max": 10.0, "step": 0.01,
                                             "tooltip": "Std of the Gaussian noise added to the frame (in -1..1 "
                                                        "pixel units) before encoding, also told to the model. "
                                                        "Reference: 0.2."}),
            "fps": ("INT", {"default": vs.DEFAULT_FPS, "min": 1, "max": 1024, "tooltip":
                            "Frame rate the model is told (SVD's fps id is fps - 1). Reference: 7."}),
            "motion_bucket_id": ("INT", {"default": vs.DEFAULT_MOTION_BUCKET, "min": 1, "max": 1023, "tooltip":
                                         "SVD's motion amount. Reference: 127."}),
            "seed": ("INT", {"default": vs.DEFAULT_SEED, "min": 0, "max": 2**31 - 1, "tooltip":
                             "Seed of the augmentation noise (reference: 42). The same seed on the original and the "
                             "edited frame makes an unedited frame reproduce the inversion's conditioning."}),
        }}

    def encode(self, clip_vision, vae, image, video_latent, noise_aug_strength, fps, motion_bucket_id, seed):
        samples = host.check_latent(video_latent, "video_latent")
        if not torch.is_tensor(image) or image.ndim != 4 or image.shape[0] < 1 or image.shape[-1] < 3:
            raise STEMError("expected an IMAGE [batch, height, width, 3]", input_name="image")
        height, width = samples.shape[-2] * 8, samples.shape[-1] * 8
        frame = image[:1, :, :, :3].float()
        notes = []
        if image.shape[0] > 1:
            notes.append(f"note: image holds {image.shape[0]} pictures; the first is used")
        if tuple(frame.shape[1:3]) != (height, width):
            notes.append(f"warning: the frame is {frame.shape[2]}x{frame.shape[1]} but the video is {width}x{height}; "
                         f"it was resized (squashed) to {width}x{height}. Edit a frame of the video's own size to "
                         f"avoid the distortion")
        pixels = vs.resize_frames(frame, width, height)
        generator = torch.Generator().manual_seed(int(seed))
        # the reference adds noise_aug_strength to -1..1 pixels; ComfyUI's VAE takes 0..1 (x * 2 - 1)
        noise = torch.randn(pixels.shape, generator=generator) * (float(noise_aug_strength) / 2.0)
        with torch.no_grad():
            embeds = host.clip_vision_embedding(clip_vision, frame)
            concat = host.vae_encode_mode(vae, pixels + noise)
            clean = host.vae_encode_mode(vae, pixels)
        positive, negative = host.svd_conditioning(embeds, concat, fps, motion_bucket_id, noise_aug_strength)
        info = _report(self.TITLE, f"first frame {width}x{height}, noise augmentation {noise_aug_strength:g} "
                                   f"(seed {seed}), fps {fps}, motion bucket {motion_bucket_id}", notes)
        return {"ui": {"text": [info]}, "result": (positive, negative, {"samples": clean}, info)}


class STEMVideoshopInvert:
    TITLE = "STEM Videoshop Invert (SVD, noise extrapolation)"
    CATEGORY = host.category("videoshop")
    DESCRIPTION = ("Inverts the video with Stable Video Diffusion conditioned on its ORIGINAL first frame: latents "
                   "normalised, each Euler v-step inverted exactly with the noisier latent extrapolated along a "
                   "straight line (Videoshop). Clips longer than the model's window are inverted in overlapping "
                   "windows when long_clip is on.")
    RETURN_TYPES = ("LATENT", TRAJECTORY, "STRING")
    RETURN_NAMES = ("inverted_latent", "trajectory", "info")
    OUTPUT_TOOLTIPS = ("The inverted (noisy) latent at the edit's first sigma, normalised units.",
                       "Everything Videoshop Edit needs (inverted windows, schedule, normalisation).",
                       "A description of the inversion and any warnings.")
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "Stable Video Diffusion img2vid (Image Only Checkpoint Loader)."}),
            "positive": ("CONDITIONING", {"tooltip": "Conditioning of the ORIGINAL first frame (STEM Videoshop "
                                                     "Conditioning, or SVD_img2vid_Conditioning)."}),
            "negative": ("CONDITIONING", {"tooltip": "Its negative; used only when cfg is not 1."}),
            "latent": ("LATENT", {"tooltip": "All frames of the video (VAE Encode of STEM Load Video)."}),
            "steps": ("INT", {"default": vs.DEFAULT_STEPS, "min": 2, "max": host.MAX_STEPS, "tooltip":
                              "Euler steps of the full karras schedule (reference: 25). The edit follows."}),
            "strength": ("FLOAT", {"default": vs.DEFAULT_STRENGTH, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                   "How far the video is inverted: int(steps x strength) steps, from sigma 0 up to "
                                   "the schedule's sigma there (reference: 0.55, 13 of 25 steps, sigma 15.6). More "
                                   "lets the edit change more, less keeps more of the source. Not 0 or 1."}),
            "extrapolate": ("BOOLEAN", {"default": True, "tooltip":
                                        "Noise extrapolation (Videoshop): the noisier latent is guessed on the "
                                        "straight line from the clean latent (a fixed noise at sigma <= 1) before "
                                        "each model call. Off: plain Euler inversion."}),
            "normalize": (list(vs.NORMALIZE_MODES), {"default": "per frame", "tooltip":
                                                     "Latent normalisation before inversion: per frame (the "
                                                     "reference's code), per channel, or off. Also normalises the "
                                                     "first-frame latent of the conditioning, as the reference does."}),
            "seed": ("INT", {"default": vs.DEFAULT_SEED, "min": 0, "max": 2**31 - 1, "tooltip":
                             "Seed of the fixed noise used at small sigmas (reference: 42)."}),
            "window_frames": ("INT", {"default": vs.SVD_WINDOW, "min": 2, "max": 256, "tooltip":
                                      "Frames the model takes at once: 14 for SVD img2vid, 25 for SVD-XT."}),
            "long_clip": ("BOOLEAN", {"default": False, "tooltip":
                                      "Propagate through a clip longer than window_frames in overlapping windows; "
                                      "each window is conditioned on the edited frame it starts on."}),
            "overlap": ("INT", {"default": 2, "min": 1, "max": 255, "tooltip":
                                "Frames shared by consecutive windows (long_clip), blended linearly. 1: a window "
                                "starts on the last frame of the previous one."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip":
                              "Guidance during inversion (reference: 1, none)."}),
        }}

    def invert(self, model, positive, negative, latent, steps, strength, extrapolate, normalize, seed, window_frames,
               long_clip, overlap, cfg=1.0):
        host.require_svd(model, self.TITLE)
        samples = host.check_latent(latent)
        host.check_svd_conditioning(positive, model, "positive")
        host.check_svd_conditioning(negative, model, "negative")
        frames = samples.shape[0]
        if frames > window_frames and not long_clip:
            raise STEMError(
                f"has {frames} frames, more than the model's window of {window_frames} frames (window_frames), and "
                f"long_clip is off", input_name="latent",
                fix=f"turn long_clip on to propagate in overlapping windows of {window_frames}, load at most "
                    f"{window_frames} frames (frame_load_cap of STEM Load Video), or set window_frames to 25 for SVD-XT")
        edit_steps = vs.edit_step_count(steps, strength)
        windows = vs.plan_windows(frames, window_frames, overlap)
        host.preflight_sampling(model, "Videoshop inversion", max(w.frames for w in windows), samples.shape[-2:],
                                groups=1 if abs(cfg - 1.0) < 1e-9 else 2)
        notes = []
        m, dropped = host.without_cfg_function_at_cfg1(model, cfg)
        if dropped:
            notes.append("note: the model's CFG function (e.g. Video Linear CFG Guidance) is not used at cfg 1")
        concat = _first_frame_latent(positive, samples.shape[-2:], "positive", notes)
        noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(int(seed)))
        # at cfg 1 the positive stands in for the negative too: any CFG function then returns the positive
        neg = negative if not abs(cfg - 1.0) < 1e-9 else positive
        scale = host.latent_scale(m)
        progress = host.Progress(edit_steps * len(windows), m)
        with torch.no_grad():
            traj = host.run_guarded("Videoshop inversion", lambda: vs.invert_video(
                _window_runs(m, positive, neg, cfg, progress), samples, concat, host.karras_sigmas(m, int(steps)),
                strength, scale, noise, normalize, extrapolate, window_frames, overlap, progress))
        normalized = vs.normalize_concat(concat, scale) if normalize != "off" else concat
        traj.source_positive = host.with_concat(positive, normalized)
        traj.source_negative = negative
        traj.settings.update(seed=int(seed), cfg=float(cfg))
        info = _report(self.TITLE, traj.describe(), notes)
        return {"ui": {"text": [info]}, "result": ({"samples": traj.inverted_latent()}, traj, info)}


class STEMVideoshopEdit:
    TITLE = "STEM Videoshop Edit (SVD, edited first frame)"
    CATEGORY = host.category("videoshop")
    DESCRIPTION = ("Samples the inverted video back with Euler, conditioned on the EDITED first frame, so the edit "
                   "follows the video's motion; then rescales the latents per channel to the edited frame's "
                   "statistics (Videoshop). The steps follow the inversion.")
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("latent", "info")
    OUTPUT_TOOLTIPS = ("The edited video's latent (VAE Decode it).", "What was done, with any warnings.")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The same SVD model (Video Linear CFG Guidance on it gives the reference's "
                                           "per-frame guidance ramp; the reference uses 4 to 4, i.e. constant)."}),
            "trajectory": (TRAJECTORY, {"tooltip": "From STEM Videoshop Invert."}),
            "positive": ("CONDITIONING", {"tooltip": "Conditioning of the EDITED first frame (STEM Videoshop "
                                                     "Conditioning, or SVD_img2vid_Conditioning)."}),
            "negative": ("CONDITIONING", {"tooltip": "Its negative (zero embedding and latent)."}),
            "cfg": ("FLOAT", {"default": vs.DEFAULT_EDIT_CFG, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip":
                              "Guidance of the edit (reference: 4). 1 reproduces the inversion's sampling."}),
            "rescale": ("BOOLEAN", {"default": True, "tooltip":
                                    "Map the result per channel onto the edited frame's latent statistics (the "
                                    "reference). Off: undo the inversion's normalisation with the source's "
                                    "statistics instead."}),
        }, "optional": {
            "edited_latent": ("LATENT", {"tooltip": "The edited frame's clean latent for rescale: the 'latent' output "
                                                    "of STEM Videoshop Conditioning, or VAE Encode of the edited frame."}),
            "first_frame_latent": ([RAW_CONCAT, NORMALIZED_CONCAT], {"default": RAW_CONCAT, "tooltip":
                                   "The edited frame's latent as the model sees it: raw, as the reference feeds it, "
                                   "or normalised as the inversion's was (then an unedited frame with the same "
                                   "seed reproduces the reconstruction)."}),
        }}

    def edit(self, model, trajectory, positive, negative, cfg, rescale, edited_latent=None,
             first_frame_latent=RAW_CONCAT):
        host.require_svd(model, self.TITLE)
        if not isinstance(trajectory, vs.VideoshopTrajectory):
            raise STEMError("connect the trajectory output of STEM Videoshop Invert", input_name="trajectory")
        if first_frame_latent not in (RAW_CONCAT, NORMALIZED_CONCAT):
            raise STEMError(f"must be '{RAW_CONCAT}' or '{NORMALIZED_CONCAT}', got '{first_frame_latent}'",
                            input_name="first_frame_latent")
        host.check_svd_conditioning(positive, model, "positive")
        host.check_svd_conditioning(negative, model, "negative")
        sigmas = host.karras_sigmas(model, trajectory.steps)
        if not torch.allclose(sigmas[-len(trajectory.edit_sigmas):].float(), trajectory.edit_sigmas, rtol=1e-4):
            raise STEMError("the model's noise schedule differs from the inversion's", input_name="model",
                            fix="use the same SVD model for Videoshop Invert and Videoshop Edit")
        notes = []
        concat = _first_frame_latent(positive, trajectory.latent_size, "positive", notes)
        if edited_latent is not None:
            reference = host.check_latent(edited_latent, "edited_latent")[:1]
        else:
            # without the clean latent, the conditioning's own first-frame latent gives the statistics
            reference = concat
            if rescale and float(positive[0][1].get("augmentation_level", 0.0)) > 0:
                notes.append("note: rescaled to the statistics of the positive's noise-augmented first-frame latent; "
                             "connect edited_latent (VAE Encode of the edited frame) for the clean one")
        m, dropped = host.without_cfg_function_at_cfg1(model, cfg)
        if dropped:
            notes.append("note: the model's CFG function (e.g. Video Linear CFG Guidance) is not used at cfg 1")
        total = trajectory.edit_steps * len(trajectory.windows)
        host.preflight_sampling(model, "Videoshop edit", max(w.frames for w in trajectory.windows),
                                trajectory.latent_size, groups=1 if abs(cfg - 1.0) < 1e-9 else 2)
        progress = host.Progress(total, m)
        with torch.no_grad():
            out = host.run_guarded("Videoshop edit", lambda: vs.edit_video(
                _window_runs(m, positive, negative, cfg, progress), trajectory, concat, reference, bool(rescale),
                first_frame_latent == NORMALIZED_CONCAT, progress))
        text = (f"Videoshop edit: {trajectory.frames} frames, {trajectory.edit_steps} Euler steps from sigma "
                f"{float(trajectory.edit_sigmas[0]):.3f}, cfg {cfg:g}, "
                + ("rescaled to the edited frame's statistics" if rescale else "source normalisation undone"))
        if len(trajectory.windows) > 1:
            seams = vs.seam_pairs(trajectory.windows, trajectory.frames)
            text += (f"; {len(trajectory.windows)} windows, blended frames "
                     + ", ".join(f"{w.start}-{w.start + w.overlap - 1}" for w in trajectory.windows[1:])
                     + f" (warp error at frames {seams[0]}..{seams[-1]} shows the seams)")
        info = _report(self.TITLE, text, notes)
        return {"ui": {"text": [info]}, "result": ({"samples": host.to_intermediate(out)}, info)}


class STEMMatchLatentStatistics:
    TITLE = "STEM Match Latent Statistics (colour lock)"
    CATEGORY = host.category("videoshop")
    DESCRIPTION = ("Gives one frame of a latent batch the per-channel mean and std of a reference frame and applies "
                   "the same per-channel map to every frame, so motion is kept (Videoshop's final rescale). Also a "
                   "colour lock after any edit: reference = the latent of a frame whose colours you want.")
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The latent batch, colour-matched.",)
    FUNCTION = "match"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent": ("LATENT", {"tooltip": "The frames to adjust (e.g. an edit's output)."}),
            "reference": ("LATENT", {"tooltip": "A latent with the wanted colours (e.g. VAE Encode of the edited "
                                                "first frame)."}),
            "source_frame": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip":
                                     "The frame of `latent` whose statistics are matched (Videoshop: 0)."}),
            "reference_frame": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip":
                                        "The frame of `reference` to match."}),
        }}

    def match(self, latent, reference, source_frame, reference_frame):
        samples = host.check_latent(latent)
        ref = host.check_latent(reference, "reference")
        if source_frame >= samples.shape[0]:
            raise STEMError(f"is {source_frame} but the latent has {samples.shape[0]} frames",
                            input_name="source_frame", fix=f"use 0..{samples.shape[0] - 1}")
        if reference_frame >= ref.shape[0]:
            raise STEMError(f"is {reference_frame} but the reference has {ref.shape[0]} frames",
                            input_name="reference_frame", fix=f"use 0..{ref.shape[0] - 1}")
        out = vs.match_latent_statistics(samples, ref.to(samples.device), int(source_frame), int(reference_frame))
        return (dict(latent, samples=out),)


class STEMVideoshopSeamReport:
    TITLE = "STEM Videoshop Seam Report (long clips)"
    CATEGORY = host.category("videoshop")
    DESCRIPTION = ("Warp error of the edited video along the source's optical flow, at the seams of Videoshop's "
                   "windows against inside them. The goal is no visible seam: a seam error within 10% of the inside.")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_TOOLTIPS = ("Seam and inside warp errors (x1e-3), their ratio and a verdict.",)
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The edited video (VAE Decode of Videoshop Edit's latent)."}),
            "source_images": ("IMAGE", {"tooltip": "The source video at the same size (its motion guides the warp)."}),
            "trajectory": (TRAJECTORY, {"tooltip": "From STEM Videoshop Invert: where the windows' seams are."}),
        }}

    def report(self, images, source_images, trajectory):
        if not isinstance(trajectory, vs.VideoshopTrajectory):
            raise STEMError("connect the trajectory output of STEM Videoshop Invert", input_name="trajectory")
        if images.shape != source_images.shape:
            raise STEMError(f"is {tuple(source_images.shape)} but images is {tuple(images.shape)}",
                            input_name="source_images", fix="load the source at the edited video's size and length")
        host.check_interrupt()
        text = vs.format_seam_report(vs.seam_warp_report(images.cpu(), source_images.cpu(), trajectory.windows))
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"STEMVideoshopConditioning": STEMVideoshopConditioning, "STEMVideoshopSeamReport":
                       STEMVideoshopSeamReport,
                       "STEMVideoshopInvert": STEMVideoshopInvert, "STEMVideoshopEdit": STEMVideoshopEdit,
                       "STEMMatchLatentStatistics": STEMMatchLatentStatistics}
