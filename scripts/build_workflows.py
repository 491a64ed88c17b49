"""Writes every example workflow in workflows/ (UI format) and workflows/api/ (API format) from the
graph descriptions below, using the real node classes (pinned ComfyUI in-process) for widget order.

    .venv/bin/python scripts/build_workflows.py        # regenerate
tests/host/test_workflows.py checks the committed files against this and against each other.
"""
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from workflow_format import build_ui, node_spec, ui_to_api  # noqa: E402

TINY_NOTE = "tiny test model: not a real edit"
DEMO_VIDEO = "stem_demo.mp4"


def n(node_id, class_type, title=None, **inputs):
    return {"id": node_id, "class_type": class_type, "title": title, "inputs": inputs}


def loader_and_model(video=DEMO_VIDEO, width=128, height=128, frames=16):
    return [
        n(1, "STEMVideoLoad", "Load video", video=video, force_rate=0.0, custom_width=width, custom_height=height,
          frame_load_cap=frames, skip_first_frames=0, select_every_nth=1, size_mode="resize"),
        n(2, "STEMTinyTestModel", "Model (tiny test model; use Load Checkpoint for real edits)", seed=0,
          model_channels=32),
        n(3, "VAEEncode", "Encode frames", pixels=[1, 0], vae=[2, 2]),
        n(4, "CLIPTextEncode", "Source prompt", text="a wolf standing in the snow", clip=[2, 1]),
    ]


def stem_patch(node_id, context="stem", model=(2, 0), title=None):
    return n(node_id, "STEMBasisEstimate", title or f"Video attention: {context}", model=list(model),
             attention_context=context, num_bases=256, iterations=3, tau=0.05, seed=0, variant="paper",
             layers="all", warm_start=True, init="tokens", chunk_tokens=0)


def reconstruction_graph():
    return loader_and_model() + [
        stem_patch(5),
        n(6, "STEMInvert", "STEM inversion", model=[5, 0], latent=[3, 0], source_conditioning=[4, 0], steps=50),
        n(7, "STEMReconstruct", "DDIM reconstruction", model=[5, 0], trajectory=[6, 1]),
        n(8, "VAEDecode", "Decode", samples=[7, 0], vae=[2, 2]),
        n(9, "STEMSaveVideo", "Save reconstruction", images=[8, 0], fps=[1, 2], filename_prefix="STEM/reconstruction"),
        n(10, "STEMVideoMetrics", "Reconstruction metrics", source=[1, 0], result=[8, 0], warp_error=True,
          flow_method="dis", label="STEM reconstruction", filename_prefix="STEM/reconstruction_metrics",
          notice=[2, 3]),
        # The VAE alone (no inversion) bounds what any reconstruction can reach; with the tiny model's
        # pooling VAE this ceiling is low, so compare the two reports rather than the absolute PSNR.
        n(11, "VAEDecode", "Decode without inversion", samples=[3, 0], vae=[2, 2]),
        n(12, "STEMVideoMetrics", "VAE round trip only (ceiling)", source=[1, 0], result=[11, 0], warp_error=False,
          flow_method="dis", label="VAE round trip only (ceiling)", filename_prefix="STEM/vae_ceiling_metrics"),
    ]


GRAPHS = {
    "stem_reconstruction": reconstruction_graph,
}


def boot_classes():
    host = Path(os.environ.get("COMFYUI_DIR", REPO / ".host" / "ComfyUI"))
    sys.path.insert(0, str(host))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import nodes
    nodes.load_custom_node(str(host / "custom_nodes" / "ComfyUI-STEM"))
    return nodes.NODE_CLASS_MAPPINGS


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
