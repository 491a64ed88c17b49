"""Videoshop (Fan et al. 2024, seed 004): propagate a first-frame edit through a video with Stable Video
Diffusion, by noise-extrapolated inversion conditioned on the original first frame and Euler sampling
conditioned on the edited one. Written from the authors' code (sfanxiang/videoshop, see
/work/notes/videoshop_spec.md), in ComfyUI's sigma space.

SVD is a v-prediction model with EDM preconditioning. ComfyUI exposes it as a denoiser
``D(x, sigma) = a x + b v`` with ``a = 1 / (sigma^2 + 1)`` and ``b = -sigma / sqrt(sigma^2 + 1)`` (diffusers'
c_skip and c_out, same numbers). Sampling is plain Euler, ``x <- D + (x - D) * sigma_next / sigma``, which is
:func:`stem_core.inversion.ddim_step`; a step to sigma 0 returns D itself.

Shapes: a video latent is [frames, 4, h, w]. LATENT tensors (ComfyUI's VAE output) are *unscaled*; the
sampler works on ``scale * latent`` (scale 0.18215 for SVD), called "sampler space" below. The drivers talk
to the host through the protocols of :mod:`stem_core.inversion`: a loop ``loop(denoise, x, sigmas) -> x``
is run by ``run(loop, sigmas, latent)`` (unscaled latent in and out, sampler space inside the loop).

Windows (no reference does this): a clip longer than the model's window (SVD: 14 frames, SVD-XT: 25) is
cut into windows that overlap; window k > 0 starts on a frame already edited by window k - 1 and is
conditioned on that edited frame (the last edited frame of the previous window when the overlap is 1), and
the overlap is blended linearly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch

from .errors import STEMError
from .inversion import DenoiseFn, Runner, StepCallback, _as_sigma_list, check_finite, ddim_sample

# run.py: 25 Euler steps, strength 0.55, edit guidance 4 (min = max), noise augmentation 0.2, fps 7,
# motion bucket 127, seed 42; the 14-frame SVD img2vid model.
DEFAULT_STEPS = 25
DEFAULT_STRENGTH = 0.55
DEFAULT_EDIT_CFG = 4.0
DEFAULT_NOISE_AUG = 0.2
DEFAULT_FPS = 7
DEFAULT_MOTION_BUCKET = 127
DEFAULT_SEED = 42
SVD_WINDOW = 14
# model_utils.controlled_generation_inverse: extrapolate only while the current sigma is above 1.
EXTRAPOLATION_THRESHOLD = 1.0
# run.py:87-90: the epsilon added to the std when normalising.
NORM_EPS = 1e-6
NORMALIZE_MODES = ("per frame", "per channel", "off")


# ----------------------------------------------------------------------------------------------------
# schedule and strength


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> torch.Tensor:
    """The reference scheduler's sigmas (EulerDiscrete with Karras sigmas, rho 7, the HF SVD config):
    [steps + 1] float64, descending from sigma_max to sigma_min, then 0. ComfyUI's ``karras`` scheduler
    gives the same list for an SVD model (its sampling settings are 0.002 / 700)."""
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ramp = torch.linspace(0, 1, int(steps), dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def edit_step_count(steps: int, strength: float) -> int:
    """How many of ``steps`` the edit runs (model_utils.py, both phases): ``min(int(steps * strength), steps)``.

    Refuses strength 0 or 1 (and what rounds to 0 steps) with a STEMError naming the fix."""
    steps = int(steps)
    strength = float(strength)
    if not math.isfinite(strength) or strength <= 0.0:
        raise STEMError(
            f"{strength:g} edits nothing: the video would not be inverted at all, so the edited first frame "
            f"could not change it", input_name="strength",
            fix=f"use a value between {math.ceil(100 / steps) / 100:.2f} and 0.95; the reference uses {DEFAULT_STRENGTH}")
    if strength >= 1.0:
        raise STEMError(
            f"{strength:g} inverts all the way to pure noise (the largest sigma): nothing of the source's "
            f"motion survives and the edit becomes a new generation", input_name="strength",
            fix=f"use a value below 1 (0.4-0.8 keeps the motion); the reference uses {DEFAULT_STRENGTH}")
    n = min(int(steps * strength), steps)
    if n < 1:
        raise STEMError(
            f"{strength:g} of {steps} steps rounds down to 0 edit steps (int({steps} x {strength:g}) = 0)",
            input_name="strength", fix=f"raise strength to at least {math.ceil(100 / steps) / 100:.2f} or use more steps")
    return n


def strength_sigmas(sigmas: torch.Tensor, strength: float):
    """(edit sigmas, inversion sigmas) for a full sampling schedule [steps + 1] ending in 0.

    The edit starts at step ``k0 = steps - n`` (n = :func:`edit_step_count`) and runs ``sigmas[k0:]``, n Euler
    steps down to 0; the inversion runs the same sigmas backwards, from 0 (the clean latent) up to
    ``sigmas[k0]``. This is the reference's rule, not ComfyUI's ``denoise`` (which stretches the schedule).
    Both returned tensors are float32 [n + 1]."""
    values = _as_sigma_list(sigmas, "sigmas")
    if values[-1] != 0.0:
        raise ValueError(f"the schedule must end in 0, last is {values[-1]:g}")
    steps = len(values) - 1
    k0 = steps - edit_step_count(steps, strength)
    edit = torch.tensor(values[k0:], dtype=torch.float32)
    return edit, edit.flip(0)


def resize_frames(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> [B, height, width, C], squashed (aspect ratio not kept), bilinear with antialias,
    as the reference resizes the video and the edited frame (data_module.PreprocessedDataset)."""
    if tuple(images.shape[1:3]) == (int(height), int(width)):
        return images
    x = images.movedim(-1, 1).float()
    x = torch.nn.functional.interpolate(x, size=(int(height), int(width)), mode="bilinear", antialias=True,
                                        align_corners=False)
    return x.movedim(1, -1).contiguous()


# ----------------------------------------------------------------------------------------------------
# latent normalisation (run.py:87-102) and the final rescale (run.py:155-164)


@dataclass
class LatentNormalization:
    """What :func:`normalize_latents` removed: z = (latent - mean) / (std + eps).

    mode: one of NORMALIZE_MODES; mean, std: broadcastable to the latent, [frames, 1, 1, 1] per frame,
    [1, C, 1, 1] per channel, scalars 0 / 1 when off."""
    mode: str
    mean: torch.Tensor
    std: torch.Tensor
    eps: float = NORM_EPS

    def frames(self, start: int, stop: int) -> "LatentNormalization":
        """The statistics of frames [start, stop) (per-frame stats are sliced, the others shared)."""
        if self.mode != "per frame":
            return self
        return LatentNormalization(self.mode, self.mean[start:stop], self.std[start:stop], self.eps)


def normalize_latents(latent: torch.Tensor, mode: str = "per frame"):
    """latent [frames, C, h, w] -> (z of the same shape, LatentNormalization).

    per frame (the reference, run.py:87-90, whose ``reshape(T, -1)`` over a B,T,C,H,W latent takes mean and
    unbiased std of each FRAME over (C, h, w)); per channel (each channel over all frames, what the paper's
    text suggests); off. float32."""
    if mode not in NORMALIZE_MODES:
        raise STEMError(f"must be one of {', '.join(NORMALIZE_MODES)}, got '{mode}'", input_name="normalize")
    x = latent.float()
    if mode == "per frame":
        flat = x.reshape(x.shape[0], -1)
        mean = flat.mean(dim=1).reshape(-1, 1, 1, 1)
        std = flat.std(dim=1).reshape(-1, 1, 1, 1)
    elif mode == "per channel":
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean = flat.mean(dim=1).reshape(1, -1, 1, 1)
        std = flat.std(dim=1).reshape(1, -1, 1, 1)
    else:
        return x.clone(), LatentNormalization(mode, x.new_zeros(()), x.new_ones(()), 0.0)
    norm = LatentNormalization(mode, mean, std)
    return (x - mean) / (std + norm.eps), norm


def denormalize_latents(z: torch.Tensor, norm: LatentNormalization) -> torch.Tensor:
    """The inverse of :func:`normalize_latents`: z [frames, C, h, w] -> latent (float32)."""
    return z.float() * (norm.std.to(z.device) + norm.eps) + norm.mean.to(z.device)


def normalize_concat(concat: torch.Tensor, latent_scale: float) -> torch.Tensor:
    """The inversion's first-frame latent as the reference feeds it (run.py:92-102): each image of
    ``concat`` [B, C, h, w] (unscaled VAE latent) minus its mean, over its std + eps (one scalar each, over
    C, h, w), divided by the latent scale, so it has the magnitude of a raw latent again."""
    x = concat.float()
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(dim=1).reshape(-1, 1, 1, 1)
    std = flat.std(dim=1).reshape(-1, 1, 1, 1)
    return (x - mean) / (std + NORM_EPS) / float(latent_scale)


def channel_statistics(latent: torch.Tensor, frame: int = 0):
    """(mean [C], unbiased std [C]) of one frame of ``latent`` [frames, C, h, w], over (h, w)."""
    if not -latent.shape[0] <= frame < latent.shape[0]:
        raise STEMError(f"frame {frame} does not exist in a latent of {latent.shape[0]} frames",
                        input_name="frame", fix=f"use 0..{latent.shape[0] - 1}")
    x = latent[frame].float().reshape(latent.shape[1], -1)
    if x.shape[1] < 2:
        raise STEMError("a latent of 1x1 has no spread to match", input_name="latent", fix="use a picture of at least 16x16")
    return x.mean(dim=1), x.std(dim=1)


def match_latent_statistics(latent: torch.Tensor, reference: torch.Tensor, source_frame: int = 0,
                            reference_frame: int = 0) -> torch.Tensor:
    """Per-channel colour lock (run.py:155-164): the affine map that gives frame ``source_frame`` of
    ``latent`` [frames, C, h, w] the per-channel mean and std of frame ``reference_frame`` of ``reference``
    [n, C, h', w'] is applied to EVERY frame, so motion and frame-to-frame changes are kept. The reference
    maps the edit's frame 0 onto the edited first frame's latent. A channel without spread (std 0) is only
    shifted. Scale-equivariant: scaled and unscaled latents give the same result up to the scale."""
    if reference.shape[1] != latent.shape[1]:
        raise STEMError(f"the reference has {reference.shape[1]} channels and the latent {latent.shape[1]}",
                        input_name="reference", fix="use latents of the same model family")
    mean_src, std_src = channel_statistics(latent, source_frame)
    mean_ref, std_ref = channel_statistics(reference, reference_frame)
    gain = torch.where(std_src > 0, std_ref / std_src.clamp_min(1e-30), torch.ones_like(std_src))
    shape = (1, -1, 1, 1)
    return (latent.float() - mean_src.view(shape)) * gain.view(shape) + mean_ref.view(shape)


# ----------------------------------------------------------------------------------------------------
# one inversion step (model_utils.controlled_generation_inverse, euler_discrete_inverse.step)


def guess_noisier(x: torch.Tensor, clean: torch.Tensor, fixed_noise: torch.Tensor, sigma: float, sigma_next: float,
                  extrapolate: bool = True) -> torch.Tensor:
    """The guess of the latent at the higher ``sigma_next`` from ``x`` at ``sigma`` (model_utils.py:294-299).

    With ``extrapolate`` (the reference): while sigma > 1 the trajectory is taken as a straight line from the
    clean latent through x, ``clean + (x - clean) * sigma_next / sigma``; at or below 1 (where x is still
    almost clean and its direction is unreliable) the fixed noise is used instead:
    ``clean + fixed_noise * sigma_next`` (``fixed_noise`` = eps * std(clean), drawn once). Without it, x
    itself stands in for the unknown noisier latent (plain Euler inversion). All [frames, C, h, w]."""
    if not extrapolate:
        return x
    if sigma > EXTRAPOLATION_THRESHOLD:
        return clean + (x - clean) * (sigma_next / sigma)
    return clean + fixed_noise * sigma_next


def inverse_euler_step(x: torch.Tensor, guess: torch.Tensor, denoised_at_guess: torch.Tensor, sigma: float,
                       sigma_next: float) -> torch.Tensor:
    """Exact inverse of one Euler v-prediction step (euler_discrete_inverse.py:472-480).

    The sampler goes from x_p at ``sigma_next`` (higher) down to x at ``sigma``:
    ``x = x_p + (sigma - sigma_next) / sigma_next * (x_p - D(x_p))`` with ``D = a x_p + b v``. Holding the
    velocity fixed at the one the model gave for ``guess`` (b v = D(guess) - a guess) and solving for x_p:
    ``x_p = [sn x + (s - sn)(D(guess) - a guess)] / [sn + (s - sn)(1 - a)]``, a = 1 / (sn^2 + 1).
    When the guess equals the true x_p, sampling returns exactly x; it stays defined at sigma = 0.
    Tensors [frames, C, h, w]; computed in float32."""
    s, sn = float(sigma), float(sigma_next)
    a = 1.0 / (sn * sn + 1.0)
    num = sn * x.float() + (s - sn) * (denoised_at_guess.float() - a * guess.float())
    return num / (sn + (s - sn) * (1.0 - a))


def invert(denoise: DenoiseFn, clean: torch.Tensor, sigmas_ascending, noise: torch.Tensor, extrapolate: bool = True,
           on_step: StepCallback = None) -> torch.Tensor:
    """Noise-extrapolated inversion of ``clean`` [frames, C, h, w] (sampler space) from sigma 0 up to
    ``sigmas_ascending[-1]``, calling the model once per step at the higher sigma, on the guess.

    sigmas_ascending: [n + 1] starting at 0 (see :func:`strength_sigmas`); noise: the fixed eps, same shape
    as ``clean`` (scaled by the unbiased std of the whole of ``clean``, as the reference does).
    Returns the latent at the highest sigma (float32)."""
    sig = _as_sigma_list(sigmas_ascending, "sigmas_ascending")
    if sig[0] != 0.0:
        raise ValueError(f"the inversion starts at the clean latent, sigma 0, not {sig[0]:g}")
    if any(not b > a for a, b in zip(sig, sig[1:])):
        raise ValueError(f"sigmas_ascending must be strictly ascending: {sig}")
    if noise.shape != clean.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have the latent's shape {tuple(clean.shape)}")
    clean = clean.float()
    fixed_noise = noise.to(clean) * clean.std()
    x = clean
    total = len(sig) - 1
    for i in range(total):
        s, s_next = sig[i], sig[i + 1]
        guess = guess_noisier(x, clean, fixed_noise, s, s_next, extrapolate)
        denoised = denoise(guess, torch.tensor(s_next, dtype=torch.float32, device=guess.device))
        if denoised.shape != x.shape:
            raise ValueError(f"denoise returned shape {tuple(denoised.shape)} for an input of shape {tuple(x.shape)}")
        x = inverse_euler_step(x, guess, denoised, s, s_next)
        if on_step is not None:
            on_step(i, total)
    return x


def euler_sample(denoise: DenoiseFn, x: torch.Tensor, sigmas_descending, on_step: StepCallback = None) -> torch.Tensor:
    """The edit: plain Euler (k-diffusion sample_euler, s_churn 0) from ``sigmas_descending[0]`` to the last
    sigma (0: the last step returns the model's prediction)."""
    return ddim_sample(denoise, x, sigmas_descending, on_step=on_step)[0]


# ----------------------------------------------------------------------------------------------------
# windows for long clips


@dataclass(frozen=True)
class Window:
    """Frames [start, stop) of the clip; ``overlap`` of them (from ``start``) were already made by the
    previous window, and frame ``start`` is the edited frame this window is conditioned on."""
    index: int
    start: int
    stop: int
    overlap: int = 0

    @property
    def frames(self) -> int:
        return self.stop - self.start


def plan_windows(frames: int, window: int, overlap: int) -> List[Window]:
    """Windows of at most ``window`` frames covering ``frames``; each after the first starts ``overlap``
    frames before the previous one ends (the last may be shorter). One window when the clip fits."""
    frames, window, overlap = int(frames), int(window), int(overlap)
    if window < 2:
        raise STEMError(f"must be at least 2, got {window}", input_name="window_frames")
    if frames <= window:
        return [Window(0, 0, frames, 0)]
    if not 1 <= overlap < window:
        raise STEMError(f"must be between 1 and window_frames - 1 = {window - 1}, got {overlap}",
                        input_name="overlap", fix="use 1-4 (the windows share these frames and blend them)")
    out = [Window(0, 0, window, 0)]
    while out[-1].stop < frames:
        start = out[-1].stop - overlap
        out.append(Window(len(out), start, min(start + window, frames), overlap))
    return out


def blend_weight(j: int, overlap: int) -> float:
    """Weight of the NEW window on the j-th shared frame (0-based): 0 on the conditioning frame, rising
    linearly so that the frame after the overlap, the new window's alone, would be 1."""
    return j / overlap


def seam_pairs(windows: Sequence[Window], frames: int) -> List[int]:
    """Frame indices t whose pair (t - 1, t) touches a seam: entering, inside or leaving an overlap."""
    seams = set()
    for w in windows[1:]:
        seams.update(t for t in range(w.start, w.start + w.overlap + 1) if 1 <= t < frames)
    return sorted(seams)


# ----------------------------------------------------------------------------------------------------
# the trajectory and the drivers


@dataclass
class VideoshopTrajectory:
    """Everything the edit needs from the inversion.

    inverted:      per window, the latent at ``edit_sigmas[0]`` in sampler space, [window frames, C, h, w]
                   float32 on the CPU (normalised units when normalisation is on).
    windows:       the plan (one window unless the clip is longer than the window).
    edit_sigmas:   descending [n + 1] from sigma[k0] to 0 (n = edit steps).
    normalization: how the source latents were normalised (rescale off undoes it).
    source_positive / source_negative: the inversion's conditioning as the model saw it (window 0).
    """
    inverted: List[torch.Tensor]
    windows: List[Window]
    edit_sigmas: torch.Tensor
    steps: int
    strength: float
    normalization: LatentNormalization
    latent_scale: float
    extrapolate: bool
    window_frames: int
    source_positive: object = None
    source_negative: object = None
    settings: dict = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return self.windows[-1].stop

    @property
    def edit_steps(self) -> int:
        return len(self.edit_sigmas) - 1

    @property
    def latent_size(self):
        return tuple(self.inverted[0].shape[-2:])

    def inverted_latent(self) -> torch.Tensor:
        """Unscaled [frames, C, h, w]: each frame from the first window that holds it."""
        parts = [self.inverted[0]] + [x[w.overlap:] for w, x in zip(self.windows[1:], self.inverted[1:])]
        return torch.cat(parts) / self.latent_scale

    def describe(self) -> str:
        h, w = self.latent_size
        first, last = float(self.edit_sigmas[0]), float(self.edit_sigmas[-2])
        text = (f"Videoshop inversion: {self.frames} frames, {w * 8}x{h * 8}, {self.edit_steps} of {self.steps} "
                f"Euler steps (strength {self.strength:g}), sigma 0 -> {first:.3f} (edit {first:.3f} -> {last:.4f} "
                f"-> 0), {'noise extrapolation' if self.extrapolate else 'plain inversion'}, "
                f"normalisation {self.normalization.mode}")
        if len(self.windows) > 1:
            spans = ", ".join(f"{w.start}-{w.stop - 1}" for w in self.windows)
            text += f"; {len(self.windows)} windows of up to {self.window_frames} frames: {spans}"
        return text


# run_for(window, concat) -> run: the host's runner for one window with the first-frame latent `concat`
# (unscaled [1, C, h, w]) put into the positive conditioning.
RunFor = Callable[[Window, torch.Tensor], Runner]


def invert_video(run_for: RunFor, latent: torch.Tensor, source_concat: torch.Tensor, sigmas: torch.Tensor,
                 strength: float, latent_scale: float, noise: torch.Tensor, normalize: str = "per frame",
                 extrapolate: bool = True, window_frames: int = SVD_WINDOW, overlap: int = 1,
                 on_step: StepCallback = None) -> VideoshopTrajectory:
    """Invert a video for Videoshop (model_utils.controlled_generation_inverse, per window).

    latent: unscaled LATENT [frames, C, h, w]; source_concat: the first frame's concat latent [1, C, h, w]
    (unscaled, from the conditioning; window k > 0 uses the video's own latent of its first frame);
    sigmas: the full descending schedule [steps + 1] ending in 0; noise: eps [frames, C, h, w].
    With normalisation on, the concat latents are normalised like the reference's (:func:`normalize_concat`).
    """
    windows = plan_windows(latent.shape[0], window_frames, overlap)
    edit, ascending = strength_sigmas(sigmas, strength)
    z, norm = normalize_latents(latent.float() * latent_scale, normalize)
    inverted = []
    for w in windows:
        concat = source_concat if w.index == 0 else latent[w.start:w.start + 1]
        if normalize != "off":
            concat = normalize_concat(concat, latent_scale)
        run = run_for(w, concat)
        clean = z[w.start:w.stop]

        def loop(denoise, x, sigmas_in, eps=noise[w.start:w.stop]):
            # x is the window's clean latent in sampler space (the runner adds no noise)
            return invert(denoise, x, sigmas_in, eps.to(x.device), extrapolate, on_step)

        out = run(loop, ascending, clean / latent_scale)
        inverted.append(check_finite(out.float() * latent_scale, "Videoshop inversion").cpu())
    return VideoshopTrajectory(inverted=inverted, windows=windows, edit_sigmas=edit, steps=len(sigmas) - 1,
                               strength=float(strength), normalization=norm, latent_scale=float(latent_scale),
                               extrapolate=bool(extrapolate), window_frames=int(window_frames),
                               settings={"normalize": normalize, "overlap": int(overlap)})


def edit_video(run_for: RunFor, trajectory: VideoshopTrajectory, edited_concat: torch.Tensor,
               rescale_reference: Optional[torch.Tensor], rescale: bool = True, concat_like_inversion: bool = False,
               on_step: StepCallback = None) -> torch.Tensor:
    """Sample every window from its inverted latent, conditioned on the edited frame (model_utils
    .controlled_generation), rescale and blend. Returns the unscaled LATENT [frames, C, h, w].

    edited_concat: the edited frame's concat latent [1, C, h, w] (unscaled; window k > 0 uses the output's
    latent of its first frame). rescale: map each window's first frame onto the per-channel statistics of
    ``rescale_reference`` (the edited frame's clean latent, [1, C, h, w] unscaled) for window 0, of the
    already edited frame it starts on for later windows; without it the source normalisation is undone.
    concat_like_inversion: normalise the edit's concat latents as the inversion's were (the reference does
    not: it feeds the edited frame raw); with it an unedited frame reproduces the reconstruction."""
    t = trajectory
    if rescale and rescale_reference is None:
        raise STEMError("rescale needs the edited frame's latent", input_name="edited_latent",
                        fix="connect the 'latent' output of STEM Videoshop Conditioning (or VAE Encode of the edited "
                            "frame), or turn rescale off")
    scale = t.latent_scale
    out = None
    for w, x_inv in zip(t.windows, t.inverted):
        concat = edited_concat if w.index == 0 else out[w.start:w.start + 1]
        if concat_like_inversion and t.normalization.mode != "off":
            concat = normalize_concat(concat, scale)
        run = run_for(w, concat)

        def loop(denoise, x, sigmas_in):
            return euler_sample(denoise, x, sigmas_in, on_step)

        y = check_finite(run(loop, t.edit_sigmas, x_inv / scale).float(), "Videoshop edit").cpu()
        if rescale:
            reference = rescale_reference if w.index == 0 else out[w.start:w.start + 1]
            y = match_latent_statistics(y, reference.float().cpu(), 0, 0)
        else:
            y = denormalize_latents(y * scale, t.normalization.frames(w.start, w.stop)) / scale
        if out is None:
            out = torch.empty((t.frames,) + tuple(y.shape[1:]), dtype=torch.float32)
            out[:w.stop] = y
            continue
        for j in range(w.overlap):
            k = blend_weight(j, w.overlap)
            out[w.start + j] = (1 - k) * out[w.start + j] + k * y[j]
        out[w.start + w.overlap:w.stop] = y[w.overlap:]
    return out


# ----------------------------------------------------------------------------------------------------
# seams of long clips


def seam_warp_report(edited, source, windows: Sequence[Window], flow_method: str = "dis") -> dict:
    """Warp error (stem_core.metrics.warp_error_per_frame: the edited frames warped along the SOURCE's
    optical flow) at the windows' seams against inside the windows.

    edited, source: IMAGE [frames, H, W, 3] in 0..1. The pairs (t - 1, t) listed by :func:`seam_pairs`
    are boundary pairs, the others inside pairs. Returns {"boundary": mean, "inside": mean, "ratio":
    boundary / inside, "boundary_pairs": [t...], "per_pair": [frames - 1], "flow": flow name}; means are
    None when there is no such pair (one window)."""
    from .metrics import warp_error_per_frame

    frames = int(edited.shape[0])
    if windows and windows[-1].stop != frames:
        raise STEMError(f"has {frames} frames but the trajectory covers {windows[-1].stop}", input_name="images",
                        fix="decode the output of the Videoshop Edit that used this trajectory")
    errors, flow = warp_error_per_frame(edited, source, method=flow_method)
    seams = [t for t in seam_pairs(windows, frames)]
    boundary = [float(errors[t - 1]) for t in seams]
    inside = [float(errors[t - 1]) for t in range(1, frames) if t not in seams]

    def mean(values):
        return sum(values) / len(values) if values else None

    b, i = mean(boundary), mean(inside)
    return {"boundary": b, "inside": i, "ratio": (b / i) if b is not None and i else None,
            "boundary_pairs": seams, "per_pair": [float(e) for e in errors], "flow": flow}


def format_seam_report(report: dict) -> str:
    """One paragraph for the node's STRING output; the goal is a boundary error within 10% of the inside."""
    if report["boundary"] is None:
        return "one window: no seams (warp error inside: " + (
            f"{report['inside'] * 1e3:.3f} x1e-3)" if report["inside"] is not None else "n/a)")
    text = (f"warp error ({report['flow']}) x1e-3: at window seams {report['boundary'] * 1e3:.3f} (pairs ending at "
            f"frames {', '.join(map(str, report['boundary_pairs']))}), inside windows "
            + (f"{report['inside'] * 1e3:.3f}" if report["inside"] is not None else "n/a"))
    if report["ratio"] is not None:
        verdict = "no visible seam (within 10%)" if report["ratio"] <= 1.10 else "seams stand out (> 10% above inside)"
        text += f"; ratio {report['ratio']:.2f}: {verdict}"
    return text
