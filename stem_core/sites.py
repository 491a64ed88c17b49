"""The self-attention sites of an SD UNet in ComfyUI's naming, named once for the whole pack.

A site is ``(block, index)`` with block "input" / "middle" / "output" and index the position in
ComfyUI's ``input_blocks`` / ``middle_block`` / ``output_blocks``; that is what ComfyUI passes to
attention patches as ``extra_options["block"]``. Each site carries its channel width and its level,
the latent's downsampling factor there (1, 2, 4, 8): at 512x512 px (64x64 latent) a level-l site has
(64/l)^2 tokens per frame.

``sites_of_unet(unet)`` reads the sites from a model's blocks (any module whose child has
``transformer_blocks``), so SD2.x / SDXL layouts follow without a rewrite; ``SD15_SITES`` is the SD1.5
table the pack checks against. Every named selection the pack uses is derived here from channels and
levels rather than listed again elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Tuple

from .errors import STEMError

SiteKey = Tuple[str, int]


@dataclass(frozen=True)
class Site:
    block: str      # "input" | "middle" | "output"
    index: int      # position in ComfyUI's input_blocks / middle_block / output_blocks
    channels: int   # width of the attention layer's input
    level: int      # latent downsampling factor at the site (1, 2, 4, 8)

    @property
    def key(self) -> SiteKey:
        return (self.block, self.index)

    @property
    def name(self) -> str:
        return site_name(self.key)

    def tokens(self, latent_h: int, latent_w: int) -> int:
        """Tokens per frame at this site for a latent of latent_h x latent_w (ComfyUI rounds up)."""
        return -(-latent_h // self.level) * -(-latent_w // self.level)


def _sd15() -> Tuple[Site, ...]:
    enc = [("input", 1, 320, 1), ("input", 2, 320, 1), ("input", 4, 640, 2), ("input", 5, 640, 2),
           ("input", 7, 1280, 4), ("input", 8, 1280, 4)]
    mid = [("middle", 0, 1280, 8)]
    dec = [("output", i, 1280, 4) for i in (3, 4, 5)] + [("output", i, 640, 2) for i in (6, 7, 8)] + \
          [("output", i, 320, 1) for i in (9, 10, 11)]
    return tuple(Site(*s) for s in enc + mid + dec)


# The 16 self-attention sites of SD1.5 in execution order (channels 320/640/1280 at model_channels 320).
SD15_SITES: Tuple[Site, ...] = _sd15()
SD15_KEYS: Tuple[SiteKey, ...] = tuple(s.key for s in SD15_SITES)
_BY_KEY: Dict[SiteKey, Site] = {s.key: s for s in SD15_SITES}

LAYER_GROUPS = {
    "all": SD15_KEYS,
    "encoder": tuple(k for k in SD15_KEYS if k[0] == "input"),
    "middle": (("middle", 0),),
    "decoder": tuple(k for k in SD15_KEYS if k[0] == "output"),
    # FateZero stores and fuses only layers with <= 32x32 tokens at 512 px (its 64x64 layers skipped for memory)
    "fatezero": tuple(s.key for s in SD15_SITES if s.level >= 2),
}
# FateZero's blend mask averages the cross-attention of the 16x16-token layers at 512 px.
BLEND_MASK_SITES = tuple(s.key for s in SD15_SITES if s.level == 4)
# FateZero's spatio-temporal attention (its zero-shot configs' least_sc_channel 640): the layers of at
# least this width attend to the middle frame; narrower ones stay per-frame.
TWO_FRAME_MIN_CHANNELS = 640
# TokenFlow injects q/k in the decoder's attention layers except the first of the lowest resolution:
# diffusers up_blocks[1].attentions[1, 2], up_blocks[2..3].attentions[0..2] = ComfyUI output 4..11
# (up_blocks[i].attentions[j] -> output_blocks[3*i + j][1]).
TOKENFLOW_QK_SITES = tuple(k for k in SD15_KEYS if k[0] == "output" and k[1] >= 4)
# TokenFlow's residual injection, diffusers up_blocks[1].resnets[1] -> ComfyUI output_blocks[4][0]
# (up_blocks[i].resnets[j] -> output_blocks[3*i + j][0]); its `out_layers` is the residual branch.
TOKENFLOW_RESIDUAL_MODULE = "diffusion_model.output_blocks.4.0.out_layers"


def site_name(key) -> str:
    return f"{key[0]}_{key[1]}"


def site_info(key) -> Site:
    """The SD1.5 Site of a key; STEMError for a key SD1.5 does not have."""
    site = _BY_KEY.get(tuple(key))
    if site is None:
        raise STEMError(f"{site_name(key)} is not one of the 16 SD1.5 self-attention layers")
    return site


def site_of(extra_options) -> SiteKey | None:
    """The site a ComfyUI attention patch is called for (None outside the UNet's blocks)."""
    block = extra_options.get("block")
    return None if block is None else (block[0], int(block[1]))


def two_frame_sites(keys: Iterable[SiteKey] = SD15_KEYS) -> tuple:
    """Sites where FateZero's spatio-temporal attention applies (channel width >= 640)."""
    return tuple(k for k in keys if site_info(k).channels >= TWO_FRAME_MIN_CHANNELS)


def parse_layers(spec: str) -> tuple:
    """'all' | 'encoder' | 'middle' | 'decoder' | 'fatezero' | 'input_1, output_11, ...' (combinable)
    -> site keys in execution order."""
    names = {site_name(k): k for k in SD15_KEYS}
    chosen = set()
    for token in (t.strip().lower() for t in str(spec).replace(";", ",").split(",")):
        if not token:
            continue
        if token in LAYER_GROUPS:
            chosen.update(LAYER_GROUPS[token])
        elif token in names:
            chosen.add(names[token])
        else:
            raise STEMError(f"unknown layer '{token}'", input_name="layers",
                            fix=f"use {', '.join(repr(g) for g in LAYER_GROUPS)} or site names such as "
                                f"{', '.join(names)}")
    if not chosen:
        raise STEMError("no layer selected", input_name="layers",
                        fix="use 'all' for the 16 self-attention layers")
    return tuple(k for k in SD15_KEYS if k in chosen)


def sites_of_unet(unet) -> Tuple[Site, ...]:
    """The self-attention sites of a ComfyUI UNet module (``model.model.diffusion_model``), read from its
    blocks: every block holding a module with ``transformer_blocks`` is a site; its level counts the
    downsampling layers passed on the way (encoder) or left to undo (decoder)."""
    sites = []
    level = 1
    for i, block in enumerate(unet.input_blocks):
        for layer in block:
            if hasattr(layer, "op") or type(layer).__name__ == "Downsample":
                level *= 2
            elif hasattr(layer, "transformer_blocks"):
                sites.append(Site("input", i, int(layer.in_channels), level))
    for layer in unet.middle_block:
        if hasattr(layer, "transformer_blocks"):
            sites.append(Site("middle", 0, int(layer.in_channels), level))
    for i, block in enumerate(unet.output_blocks):
        for layer in block:
            if hasattr(layer, "transformer_blocks"):
                sites.append(Site("output", i, int(layer.in_channels), level))
        if any(type(layer).__name__ == "Upsample" for layer in block):
            level //= 2
    return tuple(sites)
