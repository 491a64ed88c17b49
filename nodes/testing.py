"""Tiny, seeded test models for tests and the demo: SD1.5 architecture (MODEL, CLIP, VAE) and Stable Video
Diffusion img2vid architecture (MODEL, CLIP_VISION, VAE).

Built from ComfyUI's own classes with small channels (no weights are downloaded or read). Their
outputs are NOT real edits: they exist so every graph of the pack can run end to end on a CPU.
"""
import os

import torch

import comfy.clip_vision
import comfy.model_base
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models

from ..stem_core.errors import STEMError
from ..stem_core.tiny_vae import PoolingVAE
from . import host

CLIP_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_clip_config.json")
CLIP_VISION_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_clip_vision_config.json")
CONTEXT_DIM = 64
WEIGHT_SEED = ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                       "tooltip": "Seed of the random weights: the same seed gives the same model."})
SVD_HEAD_CHANNELS = 16  # SVD's config says 64 channels per head, more than the tiny model's first level has


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


# Conv3d: the temporal layers of SVD's UNet and VAE decoder; SD1.5 has none.
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
            "seed": WEIGHT_SEED,
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


# ------------------------------------------------------------------------------------------------
# Stable Video Diffusion (img2vid)

UNET_PREFIX = "model.diffusion_model."


def tiny_svd_unet_config(model_channels: int = 32) -> dict:
    """The UNet config ComfyUI detects from a real SVD img2vid file (model_detection: the video keys
    extra_ff_mix_layer, use_spatial_context, merge_strategy, merge_factor, video_kernel_size and the temporal
    res blocks and attention), with small channels and a small image-embedding width."""
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "num_classes": "sequential", "adm_in_channels": 768, "in_channels": 8, "out_channels": 4,
        # SVD's four levels with attention on the first three; one res block a level and narrow channels keep a
        # CPU call on 8 frames of 64x64 near a second
        "model_channels": model_channels, "num_res_blocks": [1, 1, 1, 1], "channel_mult": [1, 1, 2, 2],
        "transformer_depth": [1, 1, 1, 0], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": CONTEXT_DIM,
        "extra_ff_mix_layer": True, "use_spatial_context": True, "merge_strategy": "learned_with_images",
        "merge_factor": 0.0, "video_kernel_size": [3, 1, 1], "use_temporal_resblock": True,
        "use_temporal_attention": True,
    }


def _svd_config(unet_config: dict):
    config = comfy.supported_models.SVD_img2vid(dict(unet_config))
    config.unet_config["num_head_channels"] = SVD_HEAD_CHANNELS
    config.set_inference_dtype(torch.float32, None)
    return config


def tiny_svd_state_dict(seed: int = 0, model_channels: int = 32, output_scale: float = 0.05) -> dict:
    """What a tiny SVD checkpoint file would hold: the seeded UNet under ``model.diffusion_model.``."""
    config = _svd_config(tiny_svd_unet_config(model_channels))
    base = config.get_model({}, UNET_PREFIX, device=torch.device("cpu"))
    reset_weights(base, seed)
    with torch.no_grad():
        # a small output layer keeps the random velocity gentle, like a trained model's
        out_conv = base.diffusion_model.out[-1]
        out_conv.weight.mul_(output_scale)
        out_conv.bias.mul_(output_scale)
    return {UNET_PREFIX + k: v for k, v in base.diffusion_model.state_dict().items()}


def load_tiny_svd(state_dict: dict):
    """MODEL from a tiny SVD state dict, through ComfyUI's own loading steps for a checkpoint file
    (load_checkpoint_guess_config): detect the UNet config from the keys, build the SVD model, load the
    weights, wrap it in a ModelPatcher. Only the config match is skipped (it requires 320 channels) and the
    head width is set for the small channels."""
    sd = dict(state_dict)
    detected = comfy.model_detection.detect_unet_config(sd, UNET_PREFIX)
    if not (detected.get("use_temporal_attention") and detected.get("in_channels") == 8):
        raise RuntimeError(f"the tiny SVD state dict was not detected as a video model: {detected}")
    config = _svd_config(detected)
    base = config.get_model(sd, UNET_PREFIX, device=torch.device("cpu"))
    base.load_model_weights(sd, UNET_PREFIX)
    base.eval()
    return comfy.model_patcher.ModelPatcher(
        base, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device())


def build_tiny_clip_vision(seed: int = 0):
    """A 2-layer, 64-wide CLIP vision encoder (ComfyUI's ClipVisionModel with a shrunk config), projecting to
    the tiny UNet's 64-wide image embedding; its weights go through ClipVisionModel.load_sd like a file's."""
    source = comfy.clip_vision.ClipVisionModel(CLIP_VISION_CONFIG)
    reset_weights(source.model, seed + 1)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed + 2)
    try:
        with torch.no_grad():  # a bare Parameter (torch.empty) that no layer initialises
            emb = source.model.vision_model.embeddings.class_embedding
            emb.copy_(torch.randn(emb.shape) * emb.shape[0] ** -0.5)
    finally:
        torch.random.set_rng_state(gen_state)
    clip_vision = comfy.clip_vision.ClipVisionModel(CLIP_VISION_CONFIG)
    missing, unexpected = clip_vision.load_sd(source.get_sd())
    if missing or unexpected:
        raise RuntimeError(f"tiny CLIP vision weights did not load: missing {missing}, unexpected {unexpected}")
    return clip_vision


class STEMTinySVDModel:
    """MODEL + CLIP_VISION + VAE of Stable Video Diffusion img2vid architecture with tiny random weights, in
    the output order of Image Only Checkpoint Loader. For tests and demos only."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": WEIGHT_SEED,
        }}

    RETURN_TYPES = ("MODEL", "CLIP_VISION", "VAE", "STRING")
    RETURN_NAMES = ("model", "clip_vision", "vae", "notice")
    OUTPUT_TOOLTIPS = ("Tiny random SVD img2vid UNet with temporal layers (not a real model).",
                       "Tiny random CLIP vision encoder (224x224 input, 64-wide embedding).",
                       "Weight-free stand-in VAE: 8x8 pooling and a fixed colour map.",
                       "A notice to show beside any output of this model.")
    FUNCTION = "build"
    CATEGORY = host.category("testing")
    TITLE = "STEM Tiny SVD Test Model (random weights)"
    DESCRIPTION = ("A tiny seeded Stable Video Diffusion (img2vid) model built from ComfyUI's own classes, in the "
                   "outputs' order of Image Only Checkpoint Loader, so Videoshop graphs run without checkpoints. Its "
                   "outputs are not real edits.")

    NOTICE = ("Output made with the TINY RANDOM SVD TEST MODEL (STEMTinySVDModel): random Stable Video Diffusion "
              "architecture weights and a pooling stand-in VAE. It shows the pipeline working, not a real edit.")

    def build(self, seed):
        return (load_tiny_svd(tiny_svd_state_dict(seed)), build_tiny_clip_vision(seed), PoolingVAE(), self.NOTICE)


NODE_CLASS_MAPPINGS = {"STEMTinyTestModel": STEMTinyTestModel, "STEMTinySVDModel": STEMTinySVDModel}
