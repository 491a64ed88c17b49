"""`make demo`: start ComfyUI headless on 127.0.0.1, queue the example reconstruction workflow on a
video, follow progress, and write the reconstructed video and the metrics report to an output folder.

Without --checkpoint the graph uses the tiny random test model (no SD weights exist here) and the
output says so: it demonstrates the pipeline, not a real edit.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
import run_workflow as rw  # noqa: E402

from stem_core.demo_clip import make_demo_clip  # noqa: E402

TINY_BANNER = ("NOTE: no checkpoint given, so this demo used the TINY RANDOM TEST MODEL (random SD1.5-architecture "
               "weights, pooling stand-in VAE). The result shows the pipeline and its metrics, NOT a real edit. "
               "Use CHECKPOINT=your_sd15.safetensors (in ComfyUI's models/checkpoints) for real results.")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--comfyui", required=True, help="ComfyUI folder (the pinned copy or COMFYUI_DIR)")
    ap.add_argument("--out", default="demo_output")
    ap.add_argument("--video", help="a video file or frame folder; copied into ComfyUI's input folder")
    ap.add_argument("--checkpoint", help="an SD1.5 checkpoint name in ComfyUI's models/checkpoints")
    ap.add_argument("--workflow", default=str(REPO / "workflows" / "api" / "stem_reconstruction.json"))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--steps", type=int, help="DDIM steps (default: the workflow's 50, as in the paper)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--gpu", action="store_true", help="do not pass --cpu to ComfyUI")
    args = ap.parse_args(argv)

    comfy = Path(args.comfyui).resolve()
    input_dir = comfy / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    if args.video:
        src = Path(args.video).resolve()
        if not src.exists():
            print(f"VIDEO={args.video} does not exist", file=sys.stderr)
            return 2
        video_name = src.name
        dst = input_dir / video_name
        if src != dst and not dst.exists():
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    else:
        video_name = "stem_demo.mp4"
        make_demo_clip(str(input_dir / video_name), frames=16, size=128, fps=12, seed=0)
        print(f"[demo] generated the demo clip {input_dir / video_name} (16 frames, 128x128, synthetic)")

    workflow = rw.load_workflow(args.workflow)
    workflow = rw.apply_overrides(workflow, video=video_name, checkpoint=args.checkpoint)
    if args.steps is not None:
        for node in workflow.values():
            if node["class_type"] == "STEMInvert":
                node["inputs"]["steps"] = args.steps
        print(f"[demo] DDIM steps: {args.steps}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    use_cpu = not args.gpu
    try:
        import torch
        use_cpu = use_cpu and not torch.cuda.is_available()
    except Exception:
        pass
    with rw.start_server(str(comfy), python=sys.executable, port=args.port, cpu=use_cpu) as server:
        print(f"[demo] ComfyUI at http://{server.address}; queueing {Path(args.workflow).name} on {video_name}")
        result = rw.queue_and_wait(server, workflow, timeout=args.timeout, out_dir=str(out))
    texts = [t for _, t in result["texts"]]
    report = "\n\n".join(texts)
    if not args.checkpoint:
        report = TINY_BANNER + "\n\n" + report
    (out / "metrics_report.txt").write_text(report + "\n")
    (out / "run.json").write_text(json.dumps({k: result[k] for k in ("prompt_id", "files", "downloaded",
                                                                      "elapsed_s")}, indent=1, default=str))
    print(report)
    print(f"\n[demo] finished in {result['elapsed_s']:.0f} s; files in {out}:")
    for p in result["downloaded"]:
        print("   ", p)
    print("   ", out / "metrics_report.txt")
    if not args.checkpoint:
        print("\n" + TINY_BANNER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
