"""DDIM inversion and reconstruction of a whole video in ComfyUI's sigma space.

ComfyUI's eps-prediction models work on ``x_sigma = x0 + sigma * eps`` and expose a denoiser
``D(x, sigma)`` that predicts ``x0``. In that space deterministic DDIM (eta = 0) is the Euler step of the
probability-flow ODE::

    x_next = D + sigma_next * (x - D) / sigma

Sampling runs it over a descending schedule ending in 0; inversion runs the same step over the ascending
schedule. ``abar = 1 / (1 + sigma^2)`` relates sigmas to diffusers' ``alphas_cumprod``.

The drivers (:func:`invert_video`, :func:`reconstruct_video`) are written against two small protocols the
glue provides: ``denoise(x, sigma) -> denoised`` (the model with its conditioning and patches, called by
the loops) and ``run(loop, sigmas, latent) -> latent`` (runs a loop inside the host's sampling machinery
and returns its result). Shapes: latents [frames, 4, h, w]; sigmas 1-D.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple, Union

import torch

from .errors import STEMError

SigmaLike = Union[float, torch.Tensor]
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Optional[Callable[[int, int], None]]
# A loop run inside the host's sampler: (denoise, x, sigmas) -> x.
Loop = Callable[[DenoiseFn, torch.Tensor, torch.Tensor], torch.Tensor]
Runner = Callable[[Loop, torch.Tensor, torch.Tensor], torch.Tensor]


def _as_float(s: SigmaLike) -> float:
    return float(s.item()) if isinstance(s, torch.Tensor) else float(s)


def _as_sigma_list(sigmas, what: str) -> List[float]:
    if isinstance(sigmas, torch.Tensor):
        if sigmas.ndim != 1:
            raise ValueError(f"{what} must be a 1-D list of sigmas, got a tensor of shape {tuple(sigmas.shape)}")
        values = [float(v) for v in sigmas.detach().cpu().double()]
    else:
        values = [float(v) for v in sigmas]
    if len(values) < 2:
        raise ValueError(f"{what} needs at least 2 sigmas (one step), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} contains a non-finite sigma: {values}")
    return values


def ddim_step(x: torch.Tensor, denoised: torch.Tensor, sigma: SigmaLike, sigma_next: SigmaLike) -> torch.Tensor:
    """One deterministic DDIM step from ``sigma`` to ``sigma_next``.

    x, denoised: same shape (e.g. [B, 4, h, w]); sigma > 0 (the step divides by it).
    Works in both directions: sigma_next < sigma samples, sigma_next > sigma inverts.
    sigma_next = 0 returns ``denoised`` exactly.
    """
    s = _as_float(sigma)
    s_next = _as_float(sigma_next)
    if not s > 0.0:
        raise ValueError(f"ddim_step needs sigma > 0 (it divides by sigma), got {s}")
    if s_next == 0.0:
        return denoised.clone()
    # eps estimate (x - D) / sigma, re-noised to sigma_next
    return denoised + (x - denoised) * (s_next / s)


def inversion_sigmas(sampling_sigmas) -> torch.Tensor:
    """The ascending inversion schedule that mirrors a descending sampling schedule.

    sampling_sigmas: [steps + 1], descending, ending in 0, e.g. ComfyUI's ddim_uniform ``[s_N, ..., s_1, 0]``.
    Returns [steps + 1] float32 ``[0, s_1, ..., s_N]``: inversion starts from the clean latent (sigma 0) where
    sampling ends, so the two are mirror images of one schedule (starting at sigma_min instead leaves a bias
    that no step count removes).
    """
    values = _as_sigma_list(sampling_sigmas, "sampling_sigmas")
    if values[-1] != 0.0:
        raise ValueError(
            f"sampling_sigmas must end in 0 (a full sampling schedule such as ddim_uniform), last is {values[-1]}"
        )
    for i in range(len(values) - 1):
        if not values[i] > values[i + 1]:
            raise ValueError(
                "sampling_sigmas must be strictly descending; "
                f"sigma[{i}] = {values[i]:g} is not above sigma[{i + 1}] = {values[i + 1]:g}"
            )
    return torch.tensor(values[::-1], dtype=torch.float32)


# Noise extrapolation (Videoshop, github sfanxiang/videoshop, model_utils.controlled_generation_inverse): the
# next, noisier latent is guessed on the straight line through the clean latent, but only while the current
# sigma is above 1 (its constant); below it the reference draws a fixed random noise instead, here plain DDIM.
EXTRAPOLATION_MIN_SIGMA = 1.0


def inversion_model_input(clean: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float,
                          extrapolate: bool = False) -> torch.Tensor:
    """The latent the model sees at ``sigma_next`` in the inversion step sigma -> sigma_next (all [N, 4, h, w]).

    Plain DDIM inversion (diffusers / FateZero / TokenFlow): the current latent in its variance-preserving form
    at the next timestep, i.e. ``x * sqrt(1 + sigma_next^2) / sqrt(1 + sigma^2)`` in sigma space.
    With ``extrapolate`` and sigma > EXTRAPOLATION_MIN_SIGMA (Videoshop's noise extrapolation): the point at
    sigma_next on the straight line from the clean latent through x, ``clean + (x - clean) * sigma_next / sigma``
    (exact when the ODE paths are straight, as for point-like data; a first-order guess otherwise).
    Videoshop states the rule in EDM sigma space (x = z + sigma * n); ComfyUI's SD1.5 sigma space is the same
    (x = x0 + sigma * eps, the model input rescaled by 1 / sqrt(1 + sigma^2) inside the model wrapper), so the
    rule carries over unchanged. In the VP/DDIM form x_vp = x / sqrt(1 + sigma^2) = sqrt(abar) x0 +
    sqrt(1 - abar) eps it reads x_vp' = sqrt(abar') z + (x_vp - sqrt(abar) z) sqrt(1 - abar') / sqrt(1 - abar):
    the noise part keeps its direction and is rescaled, the clean part follows the schedule. At or below
    sigma 1 (and always at sigma 0, where the line is undefined) the reference feeds ``clean + n * sigma_next *
    std(clean)`` with a fixed random n; that ignores x, makes inversion depend on a draw, and on Gaussian data
    its round trip stops converging (test oracle, N(0, 1), 50 / 200 steps: 7.9% / 9.7%), so the plain DDIM input
    is used there.
    """
    if extrapolate and sigma > EXTRAPOLATION_MIN_SIGMA:
        return clean + (x - clean) * (sigma_next / sigma)
    return x * math.sqrt((1.0 + sigma_next * sigma_next) / (1.0 + sigma * sigma))


def _sigma_tensor(s: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(s, dtype=like.dtype if like.is_floating_point() else torch.float32, device=like.device)


def _checked(denoised: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if denoised.shape != x.shape:
        raise ValueError(f"denoise_fn returned shape {tuple(denoised.shape)} for an input of shape {tuple(x.shape)}")
    return denoised


def ddim_invert(
    denoise_fn: DenoiseFn, x0: torch.Tensor, sigmas_ascending, on_step: StepCallback = None, extrapolate: bool = False
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """DDIM inversion: clean latent -> noisy latent at the largest sigma.

    Step i goes from s_i to s_{i+1} and evaluates the model at the DESTINATION sigma s_{i+1}, as DDIM inversion
    does in diffusers (DDIMInverseScheduler), FateZero (ddim_clean2noisy_loop) and TokenFlow (ddim_inversion):
    the UNet sees the current latent in its variance-preserving form z_i = x_i / sqrt(1 + s_i^2) at the next
    timestep, i.e. the sigma-space input x_in = x_i * sqrt(1 + s_{i+1}^2) / sqrt(1 + s_i^2); then
    eps = (x_in - D(x_in, s_{i+1})) / s_{i+1} and x_{i+1} = x_i + (s_{i+1} - s_i) * eps. Sampling from s_{i+1}
    to s_i evaluates at s_{i+1} too, so both directions call the model at exactly the same sigmas.
    With ``extrapolate`` the model input above sigma 1 is Videoshop's extrapolated latent instead (see
    :func:`inversion_model_input`); the update is the same, holding the model's eps fixed, which inverts the
    DDIM sampling step exactly when the input equals x_{i+1}. No extra model call.

    x0: clean latent, e.g. [N, 4, h, w] (the state at ``sigmas_ascending[0]``, normally 0).
    sigmas_ascending: [steps + 1], first >= 0, strictly ascending (see ``inversion_sigmas``).
    on_step(i, steps): called after each of the ``steps`` steps (i = 0..steps-1).
    Returns (x_T, latents): x_T has x0's shape (in sigma space, i.e. scaled like ComfyUI's noisy latents);
    latents is the trajectory, ``steps + 1`` tensors, latents[0] is x0 and latents[i] the state at
    sigmas_ascending[i].
    """
    sig = _as_sigma_list(sigmas_ascending, "sigmas_ascending")
    if sig[0] < 0.0:
        raise ValueError(f"inversion must start at a sigma >= 0, got {sig[0]:g} (use inversion_sigmas)")
    for i in range(len(sig) - 1):
        if not sig[i + 1] > sig[i]:
            raise ValueError(
                f"sigmas_ascending must be strictly ascending; sigma[{i}] = {sig[i]:g}, sigma[{i + 1}] = {sig[i + 1]:g}"
            )
    total = len(sig) - 1
    x = x0
    latents = [x]
    for i in range(total):
        s, s_next = sig[i], sig[i + 1]
        x_in = inversion_model_input(x0, x, s, s_next, extrapolate)
        eps = (x_in - _checked(denoise_fn(x_in, _sigma_tensor(s_next, x)), x)) / s_next
        x = x + (s_next - s) * eps
        latents.append(x)
        if on_step is not None:
            on_step(i, total)  # progress / Cancel hook: an exception raised here aborts the loop
    return x, latents


def ddim_sample(
    denoise_fn: DenoiseFn, x_T: torch.Tensor, sigmas_descending, on_step: StepCallback = None
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Deterministic DDIM sampling: noisy latent at sigmas_descending[0] -> clean latent.

    x_T: e.g. [N, 4, h, w], in sigma space (x0 + sigma * eps).
    sigmas_descending: [steps + 1], strictly descending, all > 0 except possibly the last,
        which is usually 0 (the last step then returns the model's denoised prediction).
    Returns (x0, latents): latents has ``steps + 1`` tensors, latents[0] is x_T.
    """
    sig = _as_sigma_list(sigmas_descending, "sigmas_descending")
    for i in range(len(sig) - 1):
        if not sig[i] > sig[i + 1]:
            raise ValueError(
                f"sigmas_descending must be strictly descending; sigma[{i}] = {sig[i]:g}, sigma[{i + 1}] = {sig[i + 1]:g}"
            )
    if sig[-1] < 0.0:
        raise ValueError(f"sigmas must not be negative, last is {sig[-1]:g}")
    total = len(sig) - 1
    x = x_T
    latents = [x]
    for i in range(total):
        denoised = _checked(denoise_fn(x, _sigma_tensor(sig[i], x)), x)
        x = ddim_step(x, denoised, sig[i], sig[i + 1])
        latents.append(x)
        if on_step is not None:
            on_step(i, total)
    return x, latents


# ----------------------------------------------------------------------------------------------------
# the trajectory


@dataclass
class InversionTrajectory:
    """Every latent of one DDIM inversion run, in the sampler's (scaled, sigma-space) units.

    latents:          list of steps + 1 tensors [frames, 4, h, w] on the CPU (the model's dtype); [0] is the clean
                      (scaled) latent, [-1] the noisiest one (x at sigma_max).
    inversion_sigmas: ascending [steps + 1]: 0, then the DDIM sigmas (sampling_sigmas reversed).
    sampling_sigmas:  descending [steps + 1] ending in 0 (ComfyUI's ddim_uniform schedule).
    latent_scale:     the model's latent scale factor (0.18215 for SD1.5): unscaled = scaled / scale.
    mode:             the attention mode of the inversion ("stem", "per_frame", "two_frame", "all_frame").
    settings:         the STEM settings as a plain dict (for reports and later nodes), with "extrapolate":
                      whether the inversion used noise extrapolation.
    source_conditioning: the CONDITIONING used for inversion (editing re-runs the source branch).
    extras:           room for editing methods (e.g. an attention store), keyed by name.
    """
    latents: list
    inversion_sigmas: torch.Tensor
    sampling_sigmas: torch.Tensor
    latent_scale: float
    mode: str
    settings: dict
    source_conditioning: object = None
    extras: dict = field(default_factory=dict)
    requested_steps: int | None = None  # what the user asked for; ddim_uniform can give one more

    @property
    def user_steps(self) -> int:
        """The `steps` value to use on later nodes (may differ from `steps` by ddim_uniform rounding)."""
        return self.requested_steps if self.requested_steps is not None else self.steps

    @property
    def steps(self) -> int:
        return len(self.latents) - 1

    @property
    def frames(self) -> int:
        return int(self.latents[0].shape[0])

    @property
    def latent_size(self) -> tuple[int, int]:
        return int(self.latents[0].shape[-2]), int(self.latents[0].shape[-1])

    def noisiest_unscaled(self) -> torch.Tensor:
        """x_T as an unscaled LATENT tensor [frames, 4, h, w] (what KSamplerAdvanced expects)."""
        return self.latents[-1].float() / self.latent_scale

    def latent_at_sampling_step(self, i: int) -> torch.Tensor:
        """The inverted latent whose sigma equals sampling_sigmas[i] (i = 0 is the noisiest)."""
        return self.latents[self.steps - i]

    def check_matches(self, *, frames: int | None = None, latent_size=None, steps: int | None = None,
                      what: str = "this node"):
        """Raise STEMError with a message saying what differs and how to fix it."""
        if frames is not None and frames != self.frames:
            raise STEMError(
                f"{what}: the trajectory was made from {self.frames} frames but got {frames}; "
                f"invert the same video (same frame selection) that you edit")
        if latent_size is not None and tuple(latent_size) != self.latent_size:
            h, w = self.latent_size
            raise STEMError(
                f"{what}: the trajectory's latents are {w * 8}x{h * 8} pixels but got "
                f"{latent_size[1] * 8}x{latent_size[0] * 8}; use the same size as the inversion")
        if steps is not None and steps != self.user_steps:
            raise STEMError(
                f"{what}: steps is {steps} but the inversion used {self.user_steps}; set steps to "
                f"{self.user_steps} or re-run STEMInvert with {steps} steps")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.latents)

    def describe(self) -> str:
        h, w = self.latent_size
        extrapolated = (f", noise extrapolated above sigma {EXTRAPOLATION_MIN_SIGMA:g}"
                        if self.settings.get("extrapolate") else "")
        return (f"{self.mode} inversion: {self.frames} frames, {w * 8}x{h * 8}, {self.steps} DDIM steps, "
                f"sigma {float(self.inversion_sigmas[0]):.4f} -> {float(self.inversion_sigmas[-1]):.2f}{extrapolated}")


# ----------------------------------------------------------------------------------------------------
# drivers


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """A model that overflows (fp16) or is broken yields NaN/Inf; never hand that on as a result."""
    if not torch.isfinite(x).all():
        raise STEMError(
            f"{what} produced NaN or Inf: the model's output overflowed or is broken. Try the model in fp32 "
            f"(e.g. --force-fp32), check the checkpoint, and use the same model for inversion and sampling.")
    return x


def invert_video(run: Runner, latent: torch.Tensor, sampling_sigmas: torch.Tensor, latent_scale: float, patch=None,
                 hooks=(), on_step: StepCallback = None, requested_steps: Optional[int] = None,
                 settings: Optional[dict] = None, source_conditioning=None, store_dtype: torch.dtype = torch.float32,
                 extrapolate: bool = False) -> Tuple[torch.Tensor, "InversionTrajectory"]:
    """Invert every frame of a video at once.

    latent: unscaled LATENT samples [frames, 4, h, w]; sampling_sigmas: the descending schedule the edit
    will use; patch: the model's VideoAttentionPatch (its bases are recorded for replay) or None;
    hooks: objects with begin_inversion(frames, sigmas, latent_hw) / finish_inversion(trajectory) /
    abort_inversion() (e.g. the FateZero attention store, which checks its size before anything runs);
    extrapolate: Videoshop's noise extrapolation above sigma 1 (:func:`inversion_model_input`), recorded in the
    trajectory's settings. Returns (x_T unscaled [frames, 4, h, w], the trajectory).
    """
    frames = latent.shape[0]
    sigmas = inversion_sigmas(sampling_sigmas)
    recorded = {}
    for hook in hooks:
        hook.begin_inversion(frames, sigmas, tuple(latent.shape[-2:]))
    bases_by_sigma = {}
    if patch is not None and patch.settings.uses_bases_as_context:
        def keep_bases(event):
            if event.get("kind") == "bases" and event.get("sigma") is not None:
                bases_by_sigma.setdefault(event["sigma"], {})[event["site"]] = event["bases"].detach().to("cpu")
        patch.add_observer(keep_bases)

    def loop(denoise, x, sigmas_in):
        x_t, latents = ddim_invert(denoise, x, sigmas_in, on_step=on_step, extrapolate=extrapolate)
        recorded["latents"] = [t.detach().to("cpu", store_dtype) for t in latents]
        return x_t

    try:
        out = check_finite(run(loop, sigmas, latent), "STEM inversion")
    except BaseException:
        # Cancel or failure: hooks drop what they recorded so nothing half-made outlives the prompt.
        for hook in hooks:
            hook.abort_inversion()
        raise
    settings = dict(settings or {"mode": "per_frame"}, extrapolate=bool(extrapolate))
    traj = InversionTrajectory(
        latents=recorded["latents"], inversion_sigmas=sigmas.cpu(), sampling_sigmas=sampling_sigmas.cpu(),
        latent_scale=latent_scale, mode=settings.get("mode", "per_frame"), settings=settings,
        source_conditioning=source_conditioning, requested_steps=requested_steps)
    if bases_by_sigma:
        # the bases of every layer at every step: reconstruction can replay the inversion's exact context
        traj.extras["stem_bases"] = sorted(bases_by_sigma.items())
    for hook in hooks:
        hook.finish_inversion(traj)
    return out, traj


def reconstruct_video(run: Runner, trajectory: "InversionTrajectory", patch=None, replay: bool = True,
                      on_step: StepCallback = None) -> torch.Tensor:
    """Deterministic DDIM sampling from x_T with the inversion's schedule -> unscaled latent [frames, 4, h, w].
    With ``replay`` the patch reads the bases the inversion estimated at each sigma."""
    if patch is not None and replay and trajectory.extras.get("stem_bases"):
        patch.set_replay(trajectory.extras["stem_bases"])

    def loop(denoise, x, sigmas_in):
        return ddim_sample(denoise, x, sigmas_in, on_step=on_step)[0]

    out = run(loop, trajectory.sampling_sigmas, trajectory.noisiest_unscaled())
    return check_finite(out, "STEM reconstruction")
