"""Deterministic DDIM (eta = 0) in ComfyUI's sigma space.

ComfyUI's eps-prediction models work on ``x_sigma = x0 + sigma * eps`` and expose a
denoiser ``D(x, sigma)`` that predicts ``x0``. In that space DDIM is the Euler step of
the probability-flow ODE::

    x_next = D + sigma_next * (x - D) / sigma

Sampling runs it over a descending schedule ending in 0; inversion runs the very same
step over the ascending schedule (DESIGN.md section 4). ``abar = 1 / (1 + sigma^2)``
relates sigmas to diffusers' ``alphas_cumprod``.

Shapes: latents are any tensor shape, typically ``[B, 4, H/8, W/8]`` (a video is a batch
of frames). Sigmas are 1-D tensors (or sequences of floats).

No ComfyUI import here: ``denoise_fn(x, sigma) -> denoised`` is whatever the caller
wraps around the model (``sigma`` is passed as a 0-d tensor on x's device).
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple, Union

import torch

__all__ = [
    "ddim_step",
    "inversion_sigmas",
    "ddim_invert",
    "ddim_sample",
    "GaussianDataDenoiser",
    "scaled_linear_sigmas",
    "ddim_uniform_sigmas",
]

SigmaLike = Union[float, torch.Tensor]
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Optional[Callable[[int, int], None]]


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


def inversion_sigmas(sampling_sigmas, start_sigma: float = 1e-4) -> torch.Tensor:
    """Ascending inversion schedule from a descending sampling schedule.

    sampling_sigmas: [steps + 1], descending, ending in 0, e.g. ComfyUI's ddim_uniform
        ``[s_max, ..., s_1, 0]``.
    start_sigma: where inversion starts, in (0, s_1): the clean latent is treated as the
        state at this tiny sigma (DDIM cannot divide by sigma = 0).
    Returns [steps + 1] float32: ``[start_sigma, s_1, ..., s_max]``; inverting over it and then
    sampling over ``sampling_sigmas`` visits the same sigmas in reverse.
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
    s_1 = values[-2]
    start = float(start_sigma)
    if not (0.0 < start < s_1):
        raise ValueError(
            f"start_sigma must lie in (0, {s_1:g}) (above 0 and below the smallest non-zero sampling sigma), "
            f"got {start:g}"
        )
    ascending = [start] + values[:-1][::-1]
    return torch.tensor(ascending, dtype=torch.float32)


def _run(denoise_fn: DenoiseFn, x: torch.Tensor, sigmas: List[float], on_step: StepCallback):
    total = len(sigmas) - 1
    latents = [x]
    for i in range(total):
        s, s_next = sigmas[i], sigmas[i + 1]
        sigma_t = torch.tensor(s, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
        denoised = denoise_fn(x, sigma_t)
        if denoised.shape != x.shape:
            raise ValueError(
                f"denoise_fn returned shape {tuple(denoised.shape)} for an input of shape {tuple(x.shape)}"
            )
        x = ddim_step(x, denoised, s, s_next)
        latents.append(x)
        if on_step is not None:
            # progress / Cancel hook: an exception raised here aborts the loop
            on_step(i, total)
    return x, latents


def ddim_invert(
    denoise_fn: DenoiseFn, x0: torch.Tensor, sigmas_ascending, on_step: StepCallback = None
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """DDIM inversion: clean latent -> noisy latent at the largest sigma.

    x0: clean latent, e.g. [N, 4, h, w] (taken as the state at ``sigmas_ascending[0]``).
    sigmas_ascending: [steps + 1], strictly ascending, first > 0 (see ``inversion_sigmas``).
    on_step(i, steps): called after each of the ``steps`` steps (i = 0..steps-1).
    Returns (x_T, latents): x_T has x0's shape (in sigma space, i.e. scaled like ComfyUI's
    noisy latents); latents is the trajectory, ``steps + 1`` tensors, latents[0] is x0 and
    latents[i] is the state at sigmas_ascending[i].
    """
    sig = _as_sigma_list(sigmas_ascending, "sigmas_ascending")
    if not sig[0] > 0.0:
        raise ValueError(f"inversion must start at a sigma > 0, got {sig[0]:g} (use inversion_sigmas)")
    for i in range(len(sig) - 1):
        if not sig[i + 1] > sig[i]:
            raise ValueError(
                f"sigmas_ascending must be strictly ascending; sigma[{i}] = {sig[i]:g}, sigma[{i + 1}] = {sig[i + 1]:g}"
            )
    return _run(denoise_fn, x0, sig, on_step)


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
    return _run(denoise_fn, x_T, sig, on_step)


class GaussianDataDenoiser:
    """Exact denoiser of Gaussian data N(mean, std^2 I): the analytic noise predictor for tests.

    If x0 ~ N(mean, std^2) and x = x0 + sigma * eps, the posterior mean is
    ``E[x0 | x] = mean + std^2 / (std^2 + sigma^2) * (x - mean)``.
    mean: float or tensor broadcastable to the latents; std: float > 0.
    Counts its calls in ``self.calls`` (tests check the number of model evaluations).
    """

    def __init__(self, mean: Union[float, torch.Tensor] = 0.0, std: float = 1.0):
        if not float(std) > 0.0:
            raise ValueError(f"std must be > 0, got {std}")
        self.mean = mean
        self.std = float(std)
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
        self.calls += 1
        mean = self.mean.to(x) if isinstance(self.mean, torch.Tensor) else self.mean
        var = self.std ** 2
        if isinstance(sigma, torch.Tensor) and sigma.numel() > 1:
            # per-sample sigmas [B], the way ComfyUI passes them
            sig = sigma.to(x).reshape(-1, *([1] * (x.ndim - 1)))
            gain = var / (var + sig ** 2)
        else:
            s = _as_float(sigma)
            gain = var / (var + s * s)
        return mean + gain * (x - mean)


def scaled_linear_sigmas(
    beta_start: float = 0.00085, beta_end: float = 0.012, timesteps: int = 1000
) -> torch.Tensor:
    """SD1.x's training sigmas: [timesteps] ascending, ``sqrt((1 - abar) / abar)``.

    Same recipe as ComfyUI's ModelSamplingDiscrete ("scaled_linear" betas: linear in sqrt(beta)),
    computed in float64 and returned as float32 like its ``sigmas`` buffer.
    """
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)
    return ((1.0 - abar) / abar).sqrt().float()


def ddim_uniform_sigmas(model_sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """ComfyUI's ``ddim_uniform`` scheduler: every ``len // steps``-th training sigma from index 1,
    reversed, with 0 appended. Returns a descending float32 tensor ``[s_max, ..., s_1, 0]``.

    model_sigmas: [T] ascending (e.g. ``scaled_linear_sigmas()``). Note: like ComfyUI, this can
    yield more than ``steps`` steps when ``T`` is not a multiple of ``steps``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = len(model_sigmas)
    stride = max(n // steps, 1)
    picked = [float(model_sigmas[i]) for i in range(1, n, stride)]
    return torch.tensor(picked[::-1] + [0.0], dtype=torch.float32)
