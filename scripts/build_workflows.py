"""Writes every example workflow from the graph descriptions below, using the real node classes (pinned ComfyUI
in-process) for widget order:

- example_workflows/<name>.json + <name>.jpg   UI format and thumbnail: what a current frontend's Templates menu
                                               (Workflow > Browse Templates) and the registry read;
- workflows/ui/<name>.json                     the same UI file (the design card's folder; drag into the editor);
                                               in a subfolder, because current hosts list every json directly in
                                               example_workflows/ AND workflows/ as templates (each twice otherwise);
- workflows/api/<name>.json                    its API twin (headless queueing, scripts/run_workflow.py).

    .venv/bin/python scripts/build_workflows.py                # regenerate
    .venv/bin/python scripts/build_workflows.py --capture-specs
        # refresh scripts/extra_node_specs.json from optional nodes (VideoHelperSuite) installed in the host's
        # custom_nodes: without them installed the builder cannot ask their classes for their inputs

Layout (scripts/workflow_format.layout): groups Load, Invert, Edit (or Reconstruct), Output from left to right,
long wires through Reroutes so that none runs under a node, the fewest crossings the columns allow (COLUMNS below
holds the columns `--search-columns` found). tests/host/test_example_workflows.py checks the committed files
against this, tests/e2e/test_workflow_sync.py the API twins against the UI files.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import comfy_host  # noqa: E402
from workflow_format import (FRONTEND_ONLY, build_ui, layout, node_spec, search_columns,  # noqa: E402
                             spec_from_object_info, ui_to_api)

DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
DEMO_VIDEO = "stem_demo.mp4"
SOURCE_PROMPT = "a red disc and a blue square moving over a textured background"
TARGET_PROMPT = "a red disc and a golden square moving over a textured background"
STYLE_PROMPT = "a watercolor painting of a red disc and a blue square moving over a textured background"
NEGATIVE_PROMPT = "ugly, blurry, low res, unrealistic, unaesthetic"
EXTRA_SPECS = REPO / "scripts" / "extra_node_specs.json"
# Node classes some workflows need beyond the pack and the pinned host: class -> where it comes from.
OPTIONAL_NODES = {
    "LoadVideo": "current ComfyUI's core video nodes (0.3.4x and later)",
    "GetVideoComponents": "current ComfyUI's core video nodes (0.3.4x and later)",
    "CreateVideo": "current ComfyUI's core video nodes (0.3.4x and later)",
    "SaveVideo": "current ComfyUI's core video nodes (0.3.4x and later)",
    "VHS_LoadVideo": "ComfyUI-VideoHelperSuite",
    "VHS_VideoCombine": "ComfyUI-VideoHelperSuite",
    "VHS_VideoInfoLoaded": "ComfyUI-VideoHelperSuite",
}


def n(node_id, class_type, title=None, group=None, **inputs):
    return {"id": node_id, "class_type": class_type, "title": title, "group": group, "inputs": inputs}


def note(text, node_id=100):
    return n(node_id, "Note", "Read me", "Load", text=text)


CLIP_NOTE = ("The clip: stem_demo.mp4, the pack's synthetic demo clip (16 frames, 128x128, 12 fps, silent; "
             "not real footage). Put it in ComfyUI's input folder from the pack's folder with "
             "`.venv/bin/python scripts/demo_clip.py <ComfyUI>/input/stem_demo.mp4 --size 128`; `make demo` makes "
             "the same clip and runs this workflow headlessly (uploading the clip under input/stem_uploads/). Pick "
             "your own video in the loader instead (with sound, the video nodes that take audio keep it): STEM "
             "reads ALL its frames at once, so keep the frame count and the size modest.\n\n"
             "Load Checkpoint: an SD1.5 checkpoint (v1-5-pruned-emaonly.safetensors or a fine-tune).")


def loader_and_model(video=DEMO_VIDEO, width=128, height=128, frames=16, load_group="Load"):
    return [
        n(1, "STEMVideoLoad", "Load video", load_group, video=video, force_rate=0.0, custom_width=width,
          custom_height=height, frame_load_cap=frames, skip_first_frames=0, select_every_nth=1, size_mode="resize"),
        n(2, "CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", "Load", ckpt_name=DEFAULT_CHECKPOINT),
        n(3, "VAEEncode", "Encode frames", "Load", pixels=[1, 0], vae=[2, 2]),
        n(4, "CLIPTextEncode", "Source prompt", "Load", text=SOURCE_PROMPT, clip=[2, 1]),
    ]


def stem_patch(node_id, context="stem", model=(2, 0), title=None, **overrides):
    settings = dict(attention_context=context, num_bases=256, iterations=3, tau=0.05, seed=0, variant="paper",
                    layers="all", warm_start=False, init="tokens", chunk_tokens=0)
    settings.update(overrides)
    return n(node_id, "STEMBasisEstimate", title or f"Video attention: {context}", "Invert", model=list(model),
             **settings)


def save(node_id, images, prefix, title, audio=(1, 3), fps=(1, 2)):
    """STEM Save Video of ``images`` with the loader's fps and (where this version of the node has the input) its
    audio; format and crf keep the node's defaults."""
    node = n(node_id, "STEMSaveVideo", title, "Output", images=[images, 0], fps=list(fps), filename_prefix=prefix)
    if audio:
        node["inputs"]["audio"] = list(audio)
    node["if_supported"] = {"audio"}
    return node


def metrics(node_id, result, label, prefix, source=(1, 0), warp=True):
    return n(node_id, "STEMVideoMetrics", f"Metrics: {label}", "Output", source=list(source), result=[result, 0],
             warp_error=warp, flow_method="dis", label=label, filename_prefix=prefix + "_metrics")


def reconstruction_graph():
    return [note(CLIP_NOTE)] + loader_and_model() + [
        stem_patch(5),
        n(6, "STEMInvert", "STEM inversion", "Invert", model=[5, 0], latent=[3, 0], source_conditioning=[4, 0],
          steps=50),
        n(7, "STEMReconstruct", "DDIM reconstruction", "Reconstruct", model=[5, 0], trajectory=[6, 1],
          bases="replay inversion bases"),
        n(8, "VAEDecode", "Decode", "Reconstruct", samples=[7, 0], vae=[2, 2]),
        save(9, 8, "STEM/reconstruction", "Save reconstruction"),
        metrics(10, 8, "STEM reconstruction", "STEM/reconstruction"),
        # The VAE alone (no inversion) bounds what any reconstruction can reach; with the tiny model's
        # pooling VAE this ceiling is low, so compare the two reports rather than the absolute PSNR.
        n(11, "VAEDecode", "Decode without inversion", "Reconstruct", samples=[3, 0], vae=[2, 2]),
        n(12, "STEMVideoMetrics", "VAE round trip only (ceiling)", "Output", source=[1, 0], result=[11, 0],
          warp_error=False, flow_method="dis", label="VAE round trip only (ceiling)",
          filename_prefix="STEM/vae_ceiling_metrics"),
    ]


def prompts_for_edit(clip=(2, 1)):
    return [n(7, "CLIPTextEncode", "Target prompt", "Edit", text=STYLE_PROMPT, clip=list(clip)),
            n(8, "CLIPTextEncode", "Negative prompt", "Edit", text=NEGATIVE_PROMPT, clip=list(clip))]


def tokenflow_edit(node_id, trajectory, title, model=(5, 0), **settings):
    """STEM TokenFlow Edit of ``trajectory`` (its steps are the inversion's) and its VAE Decode. ``model``: the
    inversion's model (the STEM patch on it is dropped for the edit)."""
    values = dict(cfg=7.5, pnp_f_t=0.8, pnp_attn_t=0.5, chunk_size=8, seed=0, blend="paper")
    values.update(settings)
    return [
        n(node_id, "STEMTokenFlowEdit", title, "Edit", model=list(model), trajectory=[trajectory, 1], positive=[7, 0],
          negative=[8, 0], **values),
        n(node_id + 1, "VAEDecode", "Decode edit", "Edit", samples=[node_id, 0], vae=[2, 2]),
    ]


def tokenflow_graph():
    return [note(CLIP_NOTE)] + loader_and_model() + [
        stem_patch(5),
        n(6, "STEMInvert", "STEM inversion", "Invert", model=[5, 0], latent=[3, 0], source_conditioning=[4, 0],
          steps=50),
    ] + prompts_for_edit() + tokenflow_edit(9, 6, "STEM-TokenFlow edit") + [
        save(11, 10, "STEM/tokenflow_stem", "Save STEM-TokenFlow edit"),
        metrics(12, 10, "STEM-TokenFlow edit", "STEM/tokenflow_stem"),
    ]


def tokenflow_side_by_side_graph():
    """The same edit after per-frame DDIM inversion and after STEM inversion, stitched source | per-frame | STEM
    into one video, with metrics for both."""
    text = ("Side by side: the same TokenFlow edit after per-frame DDIM inversion (what TokenFlow does) and after "
            "STEM inversion (whole-video bases), stitched as source | per-frame | STEM into one mp4 with the "
            "clip's sound (if it has any). Compare the warp error of the two reports: lower is more temporally "
            "consistent.\n\n"
            + CLIP_NOTE)
    return [note(text)] + loader_and_model() + [stem_patch(5)] + [
        n(20, "STEMInvert", "Per-frame DDIM inversion", "Invert", model=[2, 0], latent=[3, 0],
          source_conditioning=[4, 0], steps=50),
        n(30, "STEMInvert", "STEM inversion", "Invert", model=[5, 0], latent=[3, 0], source_conditioning=[4, 0],
          steps=50),
    ] + prompts_for_edit() + tokenflow_edit(21, 20, "TokenFlow edit (DDIM inversion)") \
      + tokenflow_edit(31, 30, "TokenFlow edit (STEM inversion)") + [
        n(40, "STEMVideoStitch", "source | per-frame | STEM", "Output", left=[1, 0], right=[22, 0], spacing=4,
          third=[32, 0]),
        save(41, 40, "STEM/tokenflow_comparison", "Save comparison"),
        metrics(42, 22, "TokenFlow (per-frame DDIM inversion)", "STEM/tokenflow_ddim"),
        metrics(43, 32, "STEM-TokenFlow (STEM inversion)", "STEM/tokenflow_stem"),
    ]


def fatezero_graph():
    text = ("STEM-FateZero: STEM Attention Store records the source's attention while STEM Invert runs; the edit "
            "fuses it. The source prompt is typed once, in 'Source prompt': STEM Invert stores its words in the "
            "trajectory for FateZero's word alignment.\n\n" + CLIP_NOTE)
    return [note(text)] + loader_and_model() + [
        stem_patch(5),
        n(6, "STEMAttentionStore", "Attention store (for FateZero)", "Invert", model=[5, 0], layers="fatezero",
          keep="cpu"),
        n(7, "STEMInvert", "STEM inversion (records attention)", "Invert", model=[6, 0], latent=[3, 0],
          source_conditioning=[4, 0], steps=50),
        n(8, "STEMFateZeroEdit", "STEM-FateZero edit", "Edit", model=[5, 0], trajectory=[7, 1], clip=[2, 1],
          target_prompt=TARGET_PROMPT, blend_words="square", blend_threshold=0.3, cross_replace_steps=0.8,
          self_replace_steps=0.5, reweight="", cfg=7.5, negative_prompt="", latent_blend=False,
          release_store=False, target_blend_words=""),
        n(9, "VAEDecode", "Decode edit", "Edit", samples=[8, 0], vae=[2, 2]),
        n(12, "MaskToImage", "Blend mask as image", "Edit", mask=[8, 1]),
        save(10, 9, "STEM/fatezero_stem", "Save STEM-FateZero edit"),
        metrics(11, 9, "STEM-FateZero edit", "STEM/fatezero_stem"),
        n(13, "PreviewImage", "Blend mask", "Output", images=[12, 0]),
    ]


def long_clip_graph():
    text = ("Long clips: every frame of the clip (frame_load_cap 0) at 256 px. STEM's EM runs over all frames in "
            "chunks of chunk_tokens tokens (bounded memory, same result), warm-started with one iteration per "
            "step (the fast setting); TokenFlow denoises chunk_size frames per UNet pass. Memory grows linearly "
            "with the frame count: halve it with select_every_nth 2, or lower the size.\n\n" + CLIP_NOTE)
    graph = [note(text)] + loader_and_model(width=256, height=256, frames=0) + [
        stem_patch(5, num_bases=256, iterations=1, warm_start=True, chunk_tokens=65536),
        n(6, "STEMInvert", "STEM inversion", "Invert", model=[5, 0], latent=[3, 0], source_conditioning=[4, 0],
          steps=50),
    ] + prompts_for_edit() + tokenflow_edit(9, 6, "STEM-TokenFlow edit", chunk_size=8) + [
        save(11, 10, "STEM/long_clip", "Save edit"),
        metrics(12, 10, "STEM-TokenFlow edit (long clip)", "STEM/long_clip"),
    ]
    return graph


def vhs_graph():
    """VideoHelperSuite around the STEM nodes: its loader's frames and audio in, its Video Combine out."""
    text = ("VideoHelperSuite variant (needs ComfyUI-VideoHelperSuite): VHS Load Video gives the frames and the "
            "audio, VHS Video Combine writes the H.264 mp4 with the sound. Leave meta_batch unconnected: STEM "
            "refuses batches of a video, it needs every frame at once.\n\n" + CLIP_NOTE)
    return [note(text),
            n(1, "VHS_LoadVideo", "Load video (VHS)", "Load", video=DEMO_VIDEO, force_rate=0, custom_width=128,
              custom_height=128, frame_load_cap=16, skip_first_frames=0, select_every_nth=1),
            n(2, "CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", "Load", ckpt_name=DEFAULT_CHECKPOINT),
            n(3, "VAEEncode", "Encode frames", "Load", pixels=[1, 0], vae=[2, 2]),
            n(4, "CLIPTextEncode", "Source prompt", "Load", text=SOURCE_PROMPT, clip=[2, 1]),
            n(13, "VHS_VideoInfoLoaded", "Frame rate", "Load", video_info=[1, 3]),
            stem_patch(5),
            n(6, "STEMInvert", "STEM inversion", "Invert", model=[5, 0], latent=[3, 0], source_conditioning=[4, 0],
              steps=50),
            ] + prompts_for_edit() + tokenflow_edit(9, 6, "STEM-TokenFlow edit") + [
        n(11, "VHS_VideoCombine", "Video Combine (VHS, with audio)", "Output", images=[10, 0], frame_rate=[13, 0],
          loop_count=0, filename_prefix="STEM/vhs_tokenflow", format="video/h264-mp4", pingpong=False,
          save_output=True, audio=[1, 2], pix_fmt="yuv420p", crf=19, save_metadata=True, trim_to_audio=False),
        metrics(12, 10, "STEM-TokenFlow edit (VHS)", "STEM/vhs_tokenflow"),
    ]


def core_video_graph():
    """Current ComfyUI's core video nodes around the STEM nodes: VIDEO in, VIDEO out, the source's audio kept."""
    text = ("Current ComfyUI (0.3.4x and later; made and run on 0.3.64): core Load Video -> Get Video Components "
            "(frames, audio, fps) -> STEM -> Create Video (frames + the source's audio) -> Save Video. Hosts "
            "without these nodes: use tokenflow_stem (STEM Load Video / STEM Save Video). Core Load Video loads "
            "every frame at full size: use a short clip whose sides are multiples of 8.\n\n" + CLIP_NOTE)
    return [note(text),
            n(1, "LoadVideo", "Load Video (core)", "Load", file=DEMO_VIDEO),
            n(14, "GetVideoComponents", "Get Video Components", "Load", video=[1, 0]),
            n(2, "CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", "Load", ckpt_name=DEFAULT_CHECKPOINT),
            n(3, "VAEEncode", "Encode frames", "Load", pixels=[14, 0], vae=[2, 2]),
            n(4, "CLIPTextEncode", "Source prompt", "Load", text=SOURCE_PROMPT, clip=[2, 1]),
            stem_patch(5),
            n(6, "STEMInvert", "STEM inversion", "Invert", model=[5, 0], latent=[3, 0], source_conditioning=[4, 0],
              steps=50),
            ] + prompts_for_edit() + tokenflow_edit(9, 6, "STEM-TokenFlow edit") + [
        n(11, "CreateVideo", "Create Video (with the source's audio)", "Output", images=[10, 0], fps=[14, 2],
          audio=[14, 1]),
        n(15, "SaveVideo", "Save Video (core)", "Output", video=[11, 0], filename_prefix="STEM/core_video_tokenflow",
          format="auto", codec="auto"),
        metrics(12, 10, "STEM-TokenFlow edit (core video nodes)", "STEM/core_video_tokenflow", source=(14, 0)),
    ]


SVD_CHECKPOINT = "svd.safetensors"
EDITED_FRAME = "edited_first_frame.png"
EDIT_PROMPT = "a watercolor painting of a red disc and a blue square on a textured background"
VIDEOSHOP_NOTE = ("Videoshop: edit the FIRST frame of the clip in any image tool, then the video is inverted with "
                  "Stable Video Diffusion conditioned on its original first frame and sampled again conditioned on "
                  "your edited frame, so the edit follows the motion. Load Checkpoint (SVD img2vid): an SVD or "
                  "SVD-XT img2vid checkpoint (svd.safetensors). SVD's own size is 14 frames of 1024x576; longer "
                  "clips: switch long_clip on in Videoshop Invert (windows with a blended overlap).\n\n")


def videoshop_graph(edited_frame, edit_group="Load"):
    """Videoshop: the video inverted with SVD conditioned on its first frame, then sampled conditioned on the
    edited first frame (``edited_frame``: the (node id, slot) of that IMAGE, in ``edit_group``). SVD's own sizes:
    14 frames of 1024x576; the reference's fps id 6 (fps 7) and motion bucket 127; edit guidance 4 to 4 (constant)."""
    svd_size = dict(width=1024, height=576, video_frames=14, motion_bucket_id=127, fps=7, augmentation_level=0.0)
    return [
        n(1, "STEMVideoLoad", "Load video", "Load", video=DEMO_VIDEO, force_rate=0.0, custom_width=1024,
          custom_height=576, frame_load_cap=14, skip_first_frames=0, select_every_nth=1, size_mode="resize"),
        n(2, "ImageOnlyCheckpointLoader", "Load Checkpoint (SVD img2vid)", "Load", ckpt_name=SVD_CHECKPOINT),
        n(3, "VAEEncode", "Encode frames", "Load", pixels=[1, 0], vae=[2, 2]),
        n(4, "ImageFromBatch", "First frame (original)", "Load", image=[1, 0], batch_index=0, length=1),
        n(6, "SVD_img2vid_Conditioning", "SVD conditioning: original first frame", "Invert", clip_vision=[2, 1],
          init_image=[4, 0], vae=[2, 2], **svd_size),
        n(9, "STEMVideoshopInvert", "Videoshop inversion (original first frame)", "Invert", model=[2, 0],
          positive=[6, 0], negative=[6, 1], latent=[3, 0], steps=25, strength=0.55, extrapolate=True,
          normalize="per frame", seed=42, window_frames=14, long_clip=False, overlap=2),
        n(7, "SVD_img2vid_Conditioning", "SVD conditioning: edited first frame", "Edit", clip_vision=[2, 1],
          init_image=list(edited_frame), vae=[2, 2], **svd_size),
        n(8, "VideoLinearCFGGuidance", "Edit guidance 4 to 4 (constant)", "Edit", model=[2, 0], min_cfg=4.0),
        n(10, "STEMVideoshopEdit", "Videoshop edit (edited first frame)", "Edit", model=[8, 0], trajectory=[9, 1],
          positive=[7, 0], negative=[7, 1], cfg=4.0, rescale=True),
        n(11, "VAEDecode", "Decode edit", "Edit", samples=[10, 0], vae=[2, 2]),
        save(12, 11, "STEM/videoshop", "Save Videoshop edit"),
        metrics(13, 11, "Videoshop edit vs source", "STEM/videoshop"),
        n(14, "STEMVideoshopSeamReport", "Seams of long clips (windows)", "Output", images=[11, 0],
          source_images=[1, 0], trajectory=[9, 1]),
    ]


def videoshop_edit_first_frame_graph():
    """Your edited first frame (any image tool) from Load Image, propagated through the video."""
    text = (VIDEOSHOP_NOTE + "Load Image (edited first frame): your edit of the clip's first frame, the size of "
            "the video (another size is resized, with a warning in Videoshop Edit's info).\n\n" + CLIP_NOTE.split("\n\n")[0])
    return [note(text)] + videoshop_graph((5, 0)) + [
        n(5, "LoadImage", "Load Image (edited first frame)", "Load", image=EDITED_FRAME),
    ]


def videoshop_sd15_first_frame_edit_graph():
    """The first frame edited inside the graph with SD1.5 img2img (denoise 0.6), then propagated by Videoshop."""
    text = (VIDEOSHOP_NOTE + "Here the first frame is edited in the graph: SD1.5 img2img of the original first "
            "frame (Load Checkpoint (SD1.5), denoise 0.6) with the target prompt.\n\n" + CLIP_NOTE.split("\n\n")[0])
    return [note(text)] + videoshop_graph((24, 0)) + [
        n(20, "CheckpointLoaderSimple", "Load Checkpoint (SD1.5, edits the first frame)", "Edit",
          ckpt_name=DEFAULT_CHECKPOINT),
        n(21, "CLIPTextEncode", "Target prompt (first frame edit)", "Edit", text=EDIT_PROMPT, clip=[20, 1]),
        n(22, "CLIPTextEncode", "Negative prompt", "Edit", text=NEGATIVE_PROMPT, clip=[20, 1]),
        n(23, "VAEEncode", "Encode first frame (SD1.5)", "Edit", pixels=[4, 0], vae=[20, 2]),
        n(25, "KSampler", "img2img of the first frame", "Edit", model=[20, 0], seed=0, steps=20, cfg=7.0,
          sampler_name="euler", scheduler="normal", positive=[21, 0], negative=[22, 0], latent_image=[23, 0],
          denoise=0.6),
        n(24, "VAEDecode", "Edited first frame", "Edit", samples=[25, 0], vae=[20, 2]),
        n(26, "PreviewImage", "Edited first frame (preview)", "Output", images=[24, 0]),
    ]


GRAPHS = {
    "stem_reconstruction": reconstruction_graph,
    "tokenflow_stem": tokenflow_graph,
    "tokenflow_side_by_side": tokenflow_side_by_side_graph,
    "fatezero_stem": fatezero_graph,
    "long_clip_tokenflow": long_clip_graph,
    "vhs_tokenflow": vhs_graph,
    "core_video_tokenflow": core_video_graph,
    "videoshop_edit_first_frame": videoshop_edit_first_frame_graph,
    "videoshop_sd15_first_frame_edit": videoshop_sd15_first_frame_edit_graph,
}
GROUP_ORDER = ("Load", "Invert", "Edit", "Reconstruct", "Output")


def optional_nodes(workflow: dict) -> dict:
    """{class: where it comes from} of the optional node classes an API or UI workflow uses."""
    types = [n["type"] for n in workflow["nodes"]] if "nodes" in workflow else \
        [n["class_type"] for n in workflow.values()]
    return {t: OPTIONAL_NODES[t] for t in types if t in OPTIONAL_NODES}


def boot_classes():
    return comfy_host.boot_in_process()["mappings"]


def specs_for(classes, graph):
    extra = json.loads(EXTRA_SPECS.read_text()) if EXTRA_SPECS.exists() else {}
    specs = {}
    for g in graph:
        cls = g["class_type"]
        if cls in FRONTEND_ONLY:
            continue
        if cls in classes:
            specs[cls] = node_spec(classes[cls])
        elif cls in extra:
            specs[cls] = spec_from_object_info(extra[cls])
        else:
            raise SystemExit(f"{cls} is neither loaded nor in {EXTRA_SPECS.name}; install it "
                             f"({OPTIONAL_NODES.get(cls, '?')}) and run --capture-specs")
    return specs


def _supported(graph, specs):
    """Drops the inputs a node description marks "if_supported" that its class does not have (yet)."""
    out = []
    for g in graph:
        names = {i[0] for i in specs[g["class_type"]]["inputs"]} if g["class_type"] in specs else set()
        drop = set(g.get("if_supported", ())) - names
        out.append(dict(g, inputs={k: v for k, v in g["inputs"].items() if k not in drop}))
    return out


# Columns inside their groups that differ from the default (one more than the latest same-group input), found
# by `build_workflows.py --search-columns` for fewer wire crossings: {workflow: {node id: column}}.
COLUMNS = {
    "stem_reconstruction": {3: 2, 10: 1},
    "tokenflow_stem": {3: 2},
    "tokenflow_side_by_side": {3: 2, 42: 1, 43: 2},
    "fatezero_stem": {3: 2},
    "long_clip_tokenflow": {3: 2},
    "vhs_tokenflow": {2: 1, 3: 2, 4: 3},
    "videoshop_edit_first_frame": {3: 2, 12: 1, 13: 1, 5: 2},
    "videoshop_sd15_first_frame_edit": {2: 1, 3: 2, 12: 1, 13: 1},
}


def described(classes, name):
    """(graph description with its COLUMNS, specs of its classes) of one workflow."""
    graph = [dict(g, column=COLUMNS[name][g["id"]]) if g["id"] in COLUMNS.get(name, {}) else g
             for g in GRAPHS[name]()]
    specs = specs_for(classes, graph)
    return _supported(graph, specs), specs


def render(classes, name):
    graph, specs = described(classes, name)
    placed, groups = layout(graph, specs, GROUP_ORDER)
    ui = build_ui(placed, specs, groups)
    return ui, ui_to_api(ui, specs), specs


def object_info_entry(cls) -> dict:
    """What /object_info says about a node class (the fields workflow_format reads)."""
    outputs = list(getattr(cls, "RETURN_TYPES", ()))
    return {"input": cls.INPUT_TYPES(), "output": outputs, "output_name": list(getattr(cls, "RETURN_NAMES", outputs)),
            "display_name": getattr(cls, "TITLE", None)}


def capture_specs(classes):
    """Refreshes extra_node_specs.json from the optional node classes this host loaded (install them into its
    custom_nodes first); a combo of input files is replaced by the demo clip (it lists the capturing host's files)."""
    extra = json.loads(EXTRA_SPECS.read_text()) if EXTRA_SPECS.exists() else {}
    found = {k: json.loads(json.dumps(object_info_entry(classes[k]), default=str)) for k in OPTIONAL_NODES
             if k in classes}
    for entry in found.values():
        for section in ("required", "optional"):
            for name, data in (entry.get("input", {}).get(section) or {}).items():
                if isinstance(data[0], list) and name in ("video", "file"):
                    data[0] = [DEMO_VIDEO]
    extra.update(found)
    # keys of "input" keep their order: it is the widget order
    EXTRA_SPECS.write_text(json.dumps(dict(sorted(extra.items())), indent=1) + "\n")
    print(f"captured {sorted(found)} into {EXTRA_SPECS.relative_to(REPO)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture-specs", action="store_true",
                    help="refresh extra_node_specs.json from the optional nodes installed in the host")
    ap.add_argument("--search-columns", action="store_true",
                    help="print, per workflow, the columns (inside their groups) that give fewer crossings than "
                         "the default ones, to copy into the graph descriptions as column=")
    args = ap.parse_args(argv)
    classes = boot_classes()
    if args.search_columns:
        for name in GRAPHS:
            found = search_columns(*described(classes, name), GROUP_ORDER)  # starts from the default columns
            print(f"{name}: {found['fewest']} crossings with columns {found['columns']}")
        return
    if args.capture_specs:
        booted = comfy_host.boot_in_process()
        # some current ComfyUI module puts comfy/ itself on sys.path, so comfy/utils.py shadows the top-level
        # `utils` package that current ComfyUI's server imports
        sys.path[:] = [p for p in sys.path if Path(p).resolve() != booted["comfyui_dir"] / "comfy"]
        if "utils" in sys.modules and Path(sys.modules["utils"].__file__).parent.name == "comfy":
            del sys.modules["utils"]
        import server  # packs such as VideoHelperSuite add their routes to the (here absent) server at import
        from aiohttp import web
        if not hasattr(server.PromptServer, "instance"):
            server.PromptServer.instance = type("NoServer", (), {"routes": web.RouteTableDef(), "prompt_queue": None,
                                                                 "number": 0})()
        extras = [booted["comfyui_dir"] / "comfy_extras" / "nodes_video.py"]  # current ComfyUI's core video nodes
        packs = [f for f in sorted((booted["comfyui_dir"] / "custom_nodes").iterdir())
                 if f.is_dir() and f.name != comfy_host.PACK_LINK_NAME and not f.name.startswith("__")]
        for path in [e for e in extras if e.exists()] + packs:
            comfy_host._load_node_module(booted["nodes"], path)
        capture_specs(classes)
        return
    from thumbnails import render_thumbnail
    for folder in ("example_workflows", "workflows/ui", "workflows/api"):
        (REPO / folder).mkdir(parents=True, exist_ok=True)
    for name in GRAPHS:
        ui, api, _ = render(classes, name)
        text = json.dumps(ui, indent=1) + "\n"
        (REPO / "example_workflows" / f"{name}.json").write_text(text)
        (REPO / "workflows" / "ui" / f"{name}.json").write_text(text)
        (REPO / "workflows" / "api" / f"{name}.json").write_text(json.dumps(api, indent=1) + "\n")
        render_thumbnail(ui, name).save(REPO / "example_workflows" / f"{name}.jpg", quality=95)
        print(f"wrote example_workflows/{name}.json (+ .jpg), workflows/ui/{name}.json, workflows/api/{name}.json")


if __name__ == "__main__":
    main()
