"""Models that are not Stable Diffusion 1.x are refused by every SD1.5 node with the detected family named.

The wrong-family models are real ComfyUI models (model_base classes with their supported_models configs)
shrunk to a few channels, as the tiny SD1.5 test model is: what the nodes read (the model config and the
prediction type) is exactly what a full-size SDXL, SD2.x v-prediction or SVD file gives.
"""
import pytest
import torch


def _tiny(config_name, base_name, unet, model_type="EPS"):
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    full = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "dtype": torch.float32, "in_channels": 4, "model_channels": 32,
            "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1], "transformer_depth_middle": 1,
            "transformer_depth_output": [1, 1, 1, 1], "use_linear_in_transformer": True, "num_head_channels": 16,
            "use_temporal_attention": False, "use_temporal_resblock": False, "adm_in_channels": None}
    full.update(unet)
    config = getattr(comfy.supported_models, config_name)(full)
    base_cls = getattr(comfy.model_base, base_name)
    base = base_cls(config, model_type=getattr(comfy.model_base.ModelType, model_type), device=torch.device("cpu"))
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


@pytest.fixture(scope="module")
def wrong_family(comfy_host):
    return {
        "SDXL": _tiny("SDXL", "SDXL", {"context_dim": 64, "adm_in_channels": 2816, "num_classes": "sequential"}),
        "Stable Diffusion 2.x": _tiny("SD20", "BaseModel", {"context_dim": 64}, "V_PREDICTION"),
        "Stable Video Diffusion": _tiny("SVD_img2vid", "SVD_img2vid",
                                        {"context_dim": 64, "in_channels": 8, "adm_in_channels": 768,
                                         "use_temporal_attention": True, "use_temporal_resblock": True,
                                         "num_classes": "sequential", "extra_ff_mix_layer": True,
                                         "use_spatial_context": True, "merge_strategy": "learned_with_images",
                                         "merge_factor": 0.0, "video_kernel_size": [3, 1, 1]},
                                        "V_PREDICTION_EDM"),
    }


CALLS = {
    "STEMBasisEstimate": lambda n, m, t: n.patch(m, "stem", 8, 1, 0.05, 0, "paper", "all", False, "tokens", 0),
    "STEMAttentionStore": lambda n, m, t: n.apply(m, "fatezero", "cpu"),
    "STEMInvert": lambda n, m, t: n.invert(m, {"samples": torch.zeros(2, 4, 8, 8)}, t["cond"], 2),
}


@pytest.mark.parametrize("node_id", sorted(CALLS))
@pytest.mark.parametrize("family", ["SDXL", "Stable Diffusion 2.x", "Stable Video Diffusion"])
def test_wrong_family_is_refused_with_its_name(node, tiny, wrong_family, node_id, family):
    _, clip, _ = tiny
    tokens = clip.tokenize("a car")
    cond = [[clip.encode_from_tokens(tokens), {}]]
    model = wrong_family[family]
    with pytest.raises(ValueError) as err:
        CALLS[node_id](node(node_id), model, {"cond": cond})
    text = str(err.value)
    assert text.startswith("model:"), text
    assert family in text, text
    assert "Stable Diffusion 1.x" in text and "SD1.5 checkpoint" in text, text
    if family == "Stable Diffusion 2.x":
        assert "v-prediction" in text


def test_sd15_passes_the_check(glue, tiny):
    host = glue("host")
    model, _, _ = tiny
    host.require_sd15(model, "STEM Invert")  # no error
    assert "Stable Diffusion 1.x" in host.model_family(model)
