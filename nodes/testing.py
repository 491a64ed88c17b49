"""A tiny, seeded SD1.5-architecture MODEL, CLIP and VAE for tests and the demo.

Built from ComfyUI's own classes with small channels (no weights are downloaded or read). Its
outputs are NOT real edits: it exists so every graph of the pack can run end to end on a CPU.
"""
import os

import torch

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models

from ..stem_core.errors import STEMError
from ..stem_core.tiny_vae import PoolingVAE
from . import host

CLIP_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_clip_config.json")
CONTEXT_DIM = 64


def tiny_unet_config(model_channels: int = 32) -> dict:
    """ComfyUI's full SD1.5 UNet config (model_detection's SD15 entry) with small channels."""
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "dtype": torch.float32, "in_channels": 4,
        "model_channels": model_channels, "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": CONTEXT_DIM,
        "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


# Conv3d: the temporal layers of SVD's UNet and VAE decoder (the full-size SVD fixture); SD1.5 has none.
_RESETTABLE = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Conv3d, torch.nn.GroupNorm,
               torch.nn.LayerNorm, torch.nn.Embedding)


def reset_weights(module: torch.nn.Module, seed: int):
    """ComfyUI builds layers without initialisation (uninitialised memory, NaN seen); give every
    layer torch's own default initialisation under a seed."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            for m in module.modules():
                for cls in _RESETTABLE:
                    if isinstance(m, cls):
                        cls.reset_parameters(m)  # the torch class's, not ComfyUI's no-op override
                        break
    finally:
        torch.random.set_rng_state(gen_state)


def build_tiny_model(seed: int = 0, model_channels: int = 32, output_scale: float = 0.05):
    config = comfy.supported_models.SD15(tiny_unet_config(model_channels))
    base = comfy.model_base.BaseModel(config, device=torch.device("cpu"))
    reset_weights(base, seed)
    with torch.no_grad():
        # a small output layer keeps the random noise prediction gentle, like a trained model's
        out_conv = base.diffusion_model.out[-1]
        out_conv.weight.mul_(output_scale)
        out_conv.bias.mul_(output_scale)
    base.eval()
    return comfy.model_patcher.ModelPatcher(
        base, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device())


class _TinyClipL(comfy.sd1_clip.SDClipModel):
    def __init__(self, device="cpu", dtype=None, **kwargs):
        kwargs.pop("textmodel_json_config", None)
        super().__init__(device=device, dtype=dtype, textmodel_json_config=CLIP_CONFIG, **kwargs)


class _TinySD1Clip(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, **kwargs):
        kwargs.pop("clip_model", None)
        super().__init__(device=device, dtype=dtype, clip_model=_TinyClipL, **kwargs)


class _ClipTarget:
    clip = _TinySD1Clip
    tokenizer = comfy.sd1_clip.SD1Tokenizer
    params = {}


def build_tiny_clip(seed: int = 0):
    """A 2-layer, 64-wide CLIP text encoder with ComfyUI's shipped SD1 tokenizer."""
    with torch.no_grad():  # the constructor copies into a parameter
        clip = comfy.sd.CLIP(_ClipTarget())
    reset_weights(clip.cond_stage_model, seed + 1)
    return clip


class STEMTinyTestModel:
    """MODEL + CLIP + VAE of SD1.5 architecture with tiny random weights. For tests and demos only."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                             "tooltip": "Seed of the random weights: the same seed gives the same model."}),
            "model_channels": ("INT", {"default": 32, "min": 8, "max": 320, "step": 8,
                                       "tooltip": "Base width of the UNet (SD1.5 uses 320)."}),
        }}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "STRING")
    RETURN_NAMES = ("model", "clip", "vae", "notice")
    OUTPUT_TOOLTIPS = ("Tiny random SD1.5-architecture UNet (not a real model).",
                       "Tiny random CLIP text encoder with the real SD1 tokenizer.",
                       "Weight-free stand-in VAE: 8x8 pooling and a fixed colour map.",
                       "A notice to show beside any output of this model.")
    FUNCTION = "build"
    CATEGORY = host.category("testing")
    TITLE = "STEM Tiny Test Model (random weights)"
    DESCRIPTION = ("A tiny seeded SD1.5-architecture model built from ComfyUI's own classes so graphs run "
                   "without checkpoints. Its outputs are not real edits.")

    NOTICE = ("Output made with the TINY RANDOM TEST MODEL (STEMTinyTestModel): random SD1.5-architecture "
              "weights and a pooling stand-in VAE. It shows the pipeline working, not a real edit.")

    def build(self, seed, model_channels):
        if model_channels % 8:
            raise STEMError(f"must be a multiple of 8 (8 attention heads), got {model_channels}",
                            input_name="model_channels")
        return (build_tiny_model(seed, model_channels), build_tiny_clip(seed), PoolingVAE(), self.NOTICE)


NODE_CLASS_MAPPINGS = {"STEMTinyTestModel": STEMTinyTestModel}
