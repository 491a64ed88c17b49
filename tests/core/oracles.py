"""Test oracles for the DDIM code: an exact Gaussian-data denoiser and SD1.x's schedules computed
independently of ComfyUI (ComfyUI's own schedule is checked against these in the host tests)."""
from __future__ import annotations

from typing import Union

import torch

SigmaLike = Union[float, torch.Tensor]


def _as_float(s: SigmaLike) -> float:
    return float(s.item()) if isinstance(s, torch.Tensor) else float(s)


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
