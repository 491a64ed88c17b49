"""A weight-free stand-in VAE for tests and the demo (no SD weights exist on the project machines).

Encoding: 8x8 average pooling and a fixed linear map from RGB into 4 latent channels (the
pseudo-inverse of SD1.5's latent-to-RGB preview factors); decoding: the matching linear map and
nearest upsampling. A round trip keeps a blurred but recognisable picture, so the effect of
inversion and reconstruction stays visible. This is NOT a real autoencoder.
"""
import torch
import torch.nn.functional as F

# SD1.5 latent -> RGB preview factors (ComfyUI's latent_formats.SD15), rows = latent channels.
SD15_LATENT_RGB_FACTORS = torch.tensor([
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
])
DOWNSCALE = 8


class PoolingVAE:
    """encode: IMAGE [B, H, W, 3] in 0..1 -> latent [B, 4, H/8, W/8]; decode: the reverse (blurred)."""

    downscale_ratio = DOWNSCALE
    upscale_ratio = DOWNSCALE
    latent_channels = 4

    def __init__(self, gain: float = 12.0):
        # gain 12 gives scaled latents of std ~0.9 on real clips, like SD1.5 latents (std ~1 after x0.18215).
        self.gain = gain
        self.rgb_to_latent = torch.linalg.pinv(SD15_LATENT_RGB_FACTORS)  # [3, 4]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 4 or pixels.shape[-1] < 3:
            raise ValueError(f"PoolingVAE.encode expects IMAGE [B, H, W, 3], got {tuple(pixels.shape)}")
        b, h, w, _ = pixels.shape
        if h % DOWNSCALE or w % DOWNSCALE:
            raise ValueError(f"image size {w}x{h} is not a multiple of {DOWNSCALE}; resize or crop it first")
        rgb = pixels[..., :3].float().movedim(-1, 1) * 2.0 - 1.0  # [B, 3, H, W] in -1..1
        pooled = F.avg_pool2d(rgb, DOWNSCALE)
        latent = torch.einsum("bchw,cl->blhw", pooled, self.rgb_to_latent.to(pooled)) * self.gain
        return latent

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.ndim != 4 or latent.shape[1] != 4:
            raise ValueError(f"PoolingVAE.decode expects LATENT [B, 4, h, w], got {tuple(latent.shape)}")
        rgb = torch.einsum("blhw,lc->bchw", latent.float() / self.gain, SD15_LATENT_RGB_FACTORS.to(latent.device))
        rgb = F.interpolate(rgb, scale_factor=DOWNSCALE, mode="nearest")
        return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).contiguous()

    # ComfyUI's tiled nodes and previews call these on real VAEs; keep the same answers.
    def encode_tiled(self, pixels, *args, **kwargs):
        return self.encode(pixels)

    def decode_tiled(self, latent, *args, **kwargs):
        return self.decode(latent)
