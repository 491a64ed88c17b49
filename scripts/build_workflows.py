"""Writes every example workflow in workflows/ (UI format) and workflows/api/ (API format) from the
graph descriptions below, using the real node classes (pinned ComfyUI in-process) for widget order.

    .venv/bin/python scripts/build_workflows.py        # regenerate
tests/e2e/test_workflow_sync.py checks the committed files against this and against each other.
"""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import comfy_host  # noqa: E402
from workflow_format import build_ui, node_spec, ui_to_api  # noqa: E402

DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
DEMO_VIDEO = "stem_demo.mp4"
SOURCE_PROMPT = "a red disc and a blue square moving over a textured background"
TARGET_PROMPT = "a red disc and a golden square moving over a textured background"
STYLE_PROMPT = "a watercolor painting of a red disc and a blue square moving over a textured background"
NEGATIVE_PROMPT = "ugly, blurry, low res, unrealistic, unaesthetic"

def n(node_id, class_type, title=None, **inputs):
    return {"id": node_id, "class_type": class_type, "title": title, "inputs": inputs}

def loader_and_model(video=DEMO_VIDEO, width=128, height=128, frames=16):
    return [
        n(1, "STEMVideoLoad", "Load video", video=video, force_rate=0.0, custom_width=width, custom_height=height,
          frame_load_cap=frames, skip_first_frames=0, select_every_nth=1, size_mode="resize"),
        n(2, "CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", ckpt_name=DEFAULT_CHECKPOINT),
        n(3, "VAEEncode", "Encode frames", pixels=[1, 0], vae=[2, 2]),
        n(4, "CLIPTextEncode", "Source prompt", text=SOURCE_PROMPT, clip=[2, 1]),
    ]

def stem_patch(node_id, context="stem", model=(2, 0), title=None):
    return n(node_id, "STEMBasisEstimate", title or f"Video attention: {context}", model=list(model),
             attention_context=context, num_bases=256, iterations=3, tau=0.05, seed=0, variant="paper",
             layers="all", warm_start=False, init="tokens", chunk_tokens=0)

def reconstruction_graph():
    return loader_and_model() + [
        stem_patch(5),
        n(6, "STEMInvert", "STEM inversion", model=[5, 0], latent=[3, 0], source_conditioning=[4, 0], steps=50),
        n(7, "STEMReconstruct", "DDIM reconstruction", model=[5, 0], trajectory=[6, 1], bases="replay inversion bases"),
        n(8, "VAEDecode", "Decode", samples=[7, 0], vae=[2, 2]),
        n(9, "STEMSaveVideo", "Save reconstruction", images=[8, 0], fps=[1, 2], filename_prefix="STEM/reconstruction"),
        n(10, "STEMVideoMetrics", "Reconstruction metrics", source=[1, 0], result=[8, 0], warp_error=True,
          flow_method="dis", label="STEM reconstruction", filename_prefix="STEM/reconstruction_metrics"),
        # The VAE alone (no inversion) bounds what any reconstruction can reach; with the tiny model's
        # pooling VAE this ceiling is low, so compare the two reports rather than the absolute PSNR.
        n(11, "VAEDecode", "Decode without inversion", samples=[3, 0], vae=[2, 2]),
        n(12, "STEMVideoMetrics", "VAE round trip only (ceiling)", source=[1, 0], result=[11, 0], warp_error=False,
          flow_method="dis", label="VAE round trip only (ceiling)", filename_prefix="STEM/vae_ceiling_metrics"),
    ]

def tokenflow_edit(node_id, trajectory, title, prefix, label, model=(2, 0)):
    return [
        n(node_id, "STEMTokenFlowEdit", title, model=list(model), trajectory=[trajectory, 1], positive=[7, 0],
          negative=[8, 0], steps=50, cfg=7.5, pnp_f_t=0.8, pnp_attn_t=0.5, chunk_size=8, seed=0,
          source_conditioning=[4, 0], source_latent=[3, 0], blend="paper"),
        n(node_id + 1, "VAEDecode", "Decode edit", samples=[node_id, 0], vae=[2, 2]),
        n(node_id + 2, "STEMSaveVideo", f"Save {label}", images=[node_id + 1, 0], fps=[1, 2], filename_prefix=prefix),
        n(node_id + 3, "STEMVideoMetrics", f"Metrics: {label}", source=[1, 0], result=[node_id + 1, 0],
          warp_error=True, flow_method="dis", label=label, filename_prefix=prefix + "_metrics"),
    ]

def prompts_for_edit():
    return [n(7, "CLIPTextEncode", "Target prompt", text=STYLE_PROMPT, clip=[2, 1]),
            n(8, "CLIPTextEncode", "Negative prompt", text=NEGATIVE_PROMPT, clip=[2, 1])]

def tokenflow_graph():
    return loader_and_model() + [stem_patch(5),
        n(6, "STEMInvert", "STEM inversion", model=[5, 0], latent=[3, 0], source_conditioning=[4, 0], steps=50),
    ] + prompts_for_edit() + tokenflow_edit(9, 6, "STEM-TokenFlow edit", "STEM/tokenflow_stem", "STEM-TokenFlow edit")

def tokenflow_side_by_side_graph():
    """The same edit after per-frame DDIM inversion and after STEM inversion, with metrics for both."""
    return loader_and_model() + [stem_patch(5)] + prompts_for_edit() + [
        n(20, "STEMInvert", "Per-frame DDIM inversion", model=[2, 0], latent=[3, 0], source_conditioning=[4, 0],
          steps=50),
    ] + tokenflow_edit(21, 20, "TokenFlow edit (DDIM inversion)", "STEM/tokenflow_ddim",
                       "TokenFlow (per-frame DDIM inversion)") + [
        n(30, "STEMInvert", "STEM inversion", model=[5, 0], latent=[3, 0], source_conditioning=[4, 0], steps=50),
    ] + tokenflow_edit(31, 30, "TokenFlow edit (STEM inversion)", "STEM/tokenflow_stem",
                       "STEM-TokenFlow (STEM inversion)")

def fatezero_graph():
    return loader_and_model() + [
        stem_patch(5),
        n(6, "STEMAttentionStore", "Attention store (for FateZero)", model=[5, 0], layers="fatezero", keep="cpu"),
        n(7, "STEMInvert", "STEM inversion (records attention)", model=[6, 0], latent=[3, 0],
          source_conditioning=[4, 0], steps=50),
        n(8, "STEMFateZeroEdit", "STEM-FateZero edit", model=[5, 0], trajectory=[7, 1], clip=[2, 1],
          source_prompt=SOURCE_PROMPT, target_prompt=TARGET_PROMPT, blend_words="square", blend_threshold=0.3,
          cross_replace_steps=0.8, self_replace_steps=0.5, reweight="", cfg=7.5, steps=50, latent_blend=False,
          release_store=False),
        n(9, "VAEDecode", "Decode edit", samples=[8, 0], vae=[2, 2]),
        n(10, "STEMSaveVideo", "Save STEM-FateZero edit", images=[9, 0], fps=[1, 2],
          filename_prefix="STEM/fatezero_stem"),
        n(11, "STEMVideoMetrics", "Metrics: STEM-FateZero edit", source=[1, 0], result=[9, 0], warp_error=True,
          flow_method="dis", label="STEM-FateZero edit", filename_prefix="STEM/fatezero_stem_metrics"),
        n(12, "MaskToImage", "Blend mask as image", mask=[8, 1]),
        n(13, "PreviewImage", "Blend mask", images=[12, 0]),
    ]

SVD_CHECKPOINT = "svd.safetensors"
EDITED_FRAME = "edited_first_frame.png"
EDIT_PROMPT = "a watercolor painting of a red disc and a blue square on a textured background"

def videoshop_graph(edited_frame):
    """Videoshop: the video inverted with SVD conditioned on its first frame, then sampled conditioned on the
    edited first frame (``edited_frame``: the (node id, slot) of that IMAGE). SVD's own sizes: 14 frames of
    1024x576; the reference's fps id 6 (fps 7) and motion bucket 127; edit guidance 4 to 4 (constant)."""
    svd_size = dict(width=1024, height=576, video_frames=14, motion_bucket_id=127, fps=7, augmentation_level=0.0)
    return [
        n(1, "STEMVideoLoad", "Load video", video=DEMO_VIDEO, force_rate=0.0, custom_width=1024, custom_height=576,
          frame_load_cap=14, skip_first_frames=0, select_every_nth=1, size_mode="resize"),
        n(2, "ImageOnlyCheckpointLoader", "Load Checkpoint (SVD img2vid)", ckpt_name=SVD_CHECKPOINT),
        n(3, "VAEEncode", "Encode frames", pixels=[1, 0], vae=[2, 2]),
        n(4, "ImageFromBatch", "First frame (original)", image=[1, 0], batch_index=0, length=1),
        n(6, "SVD_img2vid_Conditioning", "SVD conditioning: original first frame", clip_vision=[2, 1],
          init_image=[4, 0], vae=[2, 2], **svd_size),
        n(7, "SVD_img2vid_Conditioning", "SVD conditioning: edited first frame", clip_vision=[2, 1],
          init_image=list(edited_frame), vae=[2, 2], **svd_size),
        n(8, "VideoLinearCFGGuidance", "Edit guidance 4 to 4 (constant)", model=[2, 0], min_cfg=4.0),
        n(9, "STEMVideoshopInvert", "Videoshop inversion (original first frame)", model=[2, 0], positive=[6, 0],
          negative=[6, 1], latent=[3, 0], steps=25, strength=0.55, extrapolate=True, normalize="per frame",
          seed=42, window_frames=14, long_clip=False, overlap=2),
        n(10, "STEMVideoshopEdit", "Videoshop edit (edited first frame)", model=[8, 0], trajectory=[9, 1],
          positive=[7, 0], negative=[7, 1], cfg=4.0, rescale=True),
        n(11, "VAEDecode", "Decode edit", samples=[10, 0], vae=[2, 2]),
        n(12, "STEMSaveVideo", "Save Videoshop edit", images=[11, 0], fps=[1, 2], filename_prefix="STEM/videoshop"),
        n(13, "STEMVideoMetrics", "Metrics: Videoshop edit vs source", source=[1, 0], result=[11, 0],
          warp_error=True, flow_method="dis", label="Videoshop edit", filename_prefix="STEM/videoshop_metrics"),
        n(14, "STEMVideoshopSeamReport", "Seams of long clips (windows)", images=[11, 0], source_images=[1, 0],
          trajectory=[9, 1]),
    ]

def videoshop_edit_first_frame_graph():
    """Your edited first frame (any image tool) from Load Image, propagated through the video."""
    return videoshop_graph((5, 0)) + [
        n(5, "LoadImage", "Load Image (edited first frame)", image=EDITED_FRAME),
    ]

def videoshop_sd15_first_frame_edit_graph():
    """The first frame edited inside the graph with SD1.5 img2img (denoise 0.6), then propagated by Videoshop."""
    return videoshop_graph((24, 0)) + [
        n(20, "CheckpointLoaderSimple", "Load Checkpoint (SD1.5, edits the first frame)", ckpt_name=DEFAULT_CHECKPOINT),
        n(21, "CLIPTextEncode", "Target prompt (first frame edit)", text=EDIT_PROMPT, clip=[20, 1]),
        n(22, "CLIPTextEncode", "Negative prompt", text=NEGATIVE_PROMPT, clip=[20, 1]),
        n(23, "VAEEncode", "Encode first frame (SD1.5)", pixels=[4, 0], vae=[20, 2]),
        n(25, "KSampler", "img2img of the first frame", model=[20, 0], seed=0, steps=20, cfg=7.0,
          sampler_name="euler", scheduler="normal", positive=[21, 0], negative=[22, 0], latent_image=[23, 0],
          denoise=0.6),
        n(24, "VAEDecode", "Edited first frame", samples=[25, 0], vae=[20, 2]),
        n(26, "PreviewImage", "Edited first frame (preview)", images=[24, 0]),
    ]

GRAPHS = {
    "stem_reconstruction": reconstruction_graph,
    "tokenflow_stem": tokenflow_graph,
    "tokenflow_side_by_side": tokenflow_side_by_side_graph,
    "fatezero_stem": fatezero_graph,
    "videoshop_edit_first_frame": videoshop_edit_first_frame_graph,
    "videoshop_sd15_first_frame_edit": videoshop_sd15_first_frame_edit_graph,
}

def boot_classes():
    return comfy_host.boot_in_process()["mappings"]

def specs_for(classes, graph):
    return {g["class_type"]: node_spec(classes[g["class_type"]]) for g in graph}

def render(classes, name):
    graph = GRAPHS[name]()
    specs = specs_for(classes, graph)
    ui = build_ui(graph, specs)
    return ui, ui_to_api(ui, specs), specs

def main():
    classes = boot_classes()
    for name in GRAPHS:
        ui, api, _ = render(classes, name)
        (REPO / "workflows" / f"{name}.json").write_text(json.dumps(ui, indent=1) + "\n")
        (REPO / "workflows" / "api" / f"{name}.json").write_text(json.dumps(api, indent=1) + "\n")
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json")

if __name__ == "__main__":
    main()
