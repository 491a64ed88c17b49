"""The inversion trajectory: what STEMInvert hands to reconstruction and editing nodes."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


class TrajectoryMismatch(ValueError):
    """The trajectory does not belong to this video / these settings."""


@dataclass
class InversionTrajectory:
    """Every latent of one DDIM inversion run, in the sampler's (scaled, sigma-space) units.

    latents:          list of steps + 1 tensors [frames, 4, h, w] on the CPU; [0] is the clean
                      (scaled) latent, [-1] the noisiest one (x at sigma_max).
    inversion_sigmas: ascending [steps + 1] (start sigma, then the DDIM sigmas).
    sampling_sigmas:  descending [steps + 1] ending in 0 (ComfyUI's ddim_uniform schedule).
    latent_scale:     the model's latent scale factor (0.18215 for SD1.5): unscaled = scaled / scale.
    context:          the self-attention context used ("stem", "per_frame", "two_frame", "all_frame").
    settings:         the STEM settings as a plain dict (for reports and later nodes).
    source_conditioning: the CONDITIONING used for inversion (editing re-runs the source branch).
    extras:           room for editing methods (e.g. an attention store), keyed by name.
    """
    latents: list
    inversion_sigmas: torch.Tensor
    sampling_sigmas: torch.Tensor
    latent_scale: float
    context: str
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
        return self.latents[-1] / self.latent_scale

    def latent_at_sampling_step(self, i: int) -> torch.Tensor:
        """The inverted latent whose sigma equals sampling_sigmas[i] (i = 0 is the noisiest)."""
        return self.latents[self.steps - i]

    def check_matches(self, *, frames: int | None = None, latent_size=None, steps: int | None = None,
                      what: str = "this node"):
        """Raise TrajectoryMismatch with a message saying what differs and how to fix it."""
        if frames is not None and frames != self.frames:
            raise TrajectoryMismatch(
                f"{what}: the trajectory was made from {self.frames} frames but got {frames}; "
                f"invert the same video (same frame selection) that you edit")
        if latent_size is not None and tuple(latent_size) != self.latent_size:
            h, w = self.latent_size
            raise TrajectoryMismatch(
                f"{what}: the trajectory's latents are {w * 8}x{h * 8} pixels but got "
                f"{latent_size[1] * 8}x{latent_size[0] * 8}; use the same size as the inversion")
        if steps is not None and steps != self.user_steps:
            raise TrajectoryMismatch(
                f"{what}: steps is {steps} but the inversion used {self.user_steps}; set steps to "
                f"{self.user_steps} or re-run STEMInvert with {steps} steps")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.latents)

    def describe(self) -> str:
        h, w = self.latent_size
        return (f"{self.context} inversion: {self.frames} frames, {w * 8}x{h * 8}, {self.steps} DDIM steps, "
                f"sigma {float(self.inversion_sigmas[0]):.4f} -> {float(self.inversion_sigmas[-1]):.2f}")
