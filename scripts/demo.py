"""`make demo`: start ComfyUI headless on 127.0.0.1, queue an example workflow on a video, follow its
progress, and write the result videos and a metrics report into an output folder.

The checkpoint: CHECKPOINT=name (must be in the host's models/checkpoints), else the workflow's default
(v1-5-pruned-emaonly.safetensors) when the host has it, else the tiny random test model, and the output
says so: the tiny model demonstrates the pipeline, not a real edit.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import comfy_client as cc  # noqa: E402
import comfy_host  # noqa: E402
from demo_clip import make_demo_clip  # noqa: E402

TINY_BANNER = ("NOTE: the workflow's checkpoint was not found, so this demo used the TINY RANDOM TEST MODEL (random "
               "weights of the real architecture: SD1.5, or SVD for Videoshop; a pooling stand-in VAE). The result "
               "shows the pipeline and its metrics, NOT a real edit. Put your checkpoint (SD1.5; an SVD img2vid "
               "one for Videoshop) into ComfyUI's models/checkpoints and run "
               "`make demo CHECKPOINT=its_name.safetensors` for real results.")
DEMO_CLIP = dict(frames=16, size=128, fps=12, seed=0)


def workflow_path(name: str) -> Path:
    """A workflow name of workflows/api/ (with or without .json) or a path to an API-format file."""
    p = Path(name)
    if p.suffix == ".json" and p.exists():
        return p
    candidate = REPO / "workflows" / "api" / f"{p.stem}.json"
    if not candidate.exists():
        names = ", ".join(sorted(q.stem for q in (REPO / "workflows" / "api").glob("*.json")))
        raise cc.WorkflowError(f"WORKFLOW={name}: no such workflow; choose one of {names}")
    return candidate


def choose_model(server, workflow: dict, requested, comfy: Path):
    """(checkpoint name or None for the tiny model, a line saying what was chosen)."""
    info = cc.object_info(server, "CheckpointLoaderSimple")
    available = list(info["input"]["required"]["ckpt_name"][0])
    if requested:
        if requested not in available:
            holds = f"holds: {', '.join(available)}" if available else "is empty"
            raise cc.WorkflowError(
                f"CHECKPOINT={requested} is not in {comfy / 'models' / 'checkpoints'}, which {holds}. Put your SD1.5 "
                f"checkpoint there, or leave CHECKPOINT out to run the tiny test model.")
        return requested, f"checkpoint: {requested}"
    defaults = [n for names in cc.checkpoint_names(workflow).values() for n in names]
    present = [n for n in defaults if n in available]
    if present:
        return present[0], f"checkpoint: {present[0]} (the workflow's default, found in models/checkpoints)"
    return None, "the workflow's checkpoint is not in models/checkpoints: using the tiny random test model"


def wants_edited_frame(workflow: dict) -> bool:
    """Whether the (API) workflow loads an edited first frame (a Load Image titled '... edited first frame ...')."""
    return any(n["class_type"] == cc.IMAGE_LOADER and cc.EDITED_FRAME_MARK in n.get("_meta", {}).get("title", "").lower()
               for n in workflow.values())


def synthetic_edit(video: str, path: Path) -> str:
    """The clip's first frame with a green square painted on it: a stand-in 'edit' so the Videoshop demo runs
    without an image tool (say EDITED_FRAME=your.png for a real one)."""
    import av
    import numpy as np
    from PIL import Image
    if Path(video).is_dir():  # a frame folder: its first image
        first = sorted(p for p in Path(video).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))[0]
        frame = np.array(Image.open(first).convert("RGB"))
    else:
        with av.open(video) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24").copy()
    h, w = frame.shape[:2]
    frame[h // 4: h // 2, w // 4: w // 2] = (40, 200, 60)
    Image.fromarray(frame).save(path)
    print("[demo] no EDITED_FRAME given: the edited first frame is the clip's first frame with a green square")
    return str(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--comfyui", default=str(comfy_host.default_comfyui_dir()), help="ComfyUI folder")
    ap.add_argument("--out", default="demo_output")
    ap.add_argument("--workflow", default="stem_reconstruction", help="a name in workflows/api/ or a file")
    ap.add_argument("--checkpoint", help="an SD1.5 checkpoint name in ComfyUI's models/checkpoints")
    cc.add_override_arguments(ap)
    ap.add_argument("--edited-frame", help="Videoshop workflows: your edited first frame (an image file); without "
                                           "it the demo makes a synthetic one (a green square on the first frame)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--gpu", action="store_true", help="do not pass --cpu to ComfyUI")
    args = ap.parse_args(argv)

    try:
        path = workflow_path(args.workflow)
        workflow = cc.load_workflow(str(path))
        overrides = cc.overrides_from_arguments(args)
        if args.video:
            cc.check_video_path(args.video)
        if args.edited_frame and not Path(args.edited_frame).expanduser().is_file():
            raise cc.WorkflowError(f"--edited-frame {args.edited_frame}: no such image file")
    except cc.WorkflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    comfy = Path(args.comfyui).resolve()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    use_cpu = not args.gpu
    try:
        import torch
        use_cpu = use_cpu and not torch.cuda.is_available()
    except Exception:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video
        if not video:
            video = str(Path(tmp) / "stem_demo.mp4")
            make_demo_clip(video, **DEMO_CLIP)
            print(f"[demo] generated the demo clip ({DEMO_CLIP['frames']} frames, {DEMO_CLIP['size']}x"
                  f"{DEMO_CLIP['size']}, synthetic)")
        try:
            with comfy_host.start_server(str(comfy), python=comfy_host.host_python(comfy), port=args.port,
                                         cpu=use_cpu) as server:
                checkpoint, chosen = choose_model(server, workflow, args.checkpoint, comfy)
                print(f"[demo] {chosen}")
                overrides.checkpoint, overrides.tiny_model = checkpoint, checkpoint is None
                overrides.video = cc.upload_input(server, video)
                if wants_edited_frame(workflow):
                    edited = args.edited_frame or synthetic_edit(video, Path(tmp) / "edited_first_frame.png")
                    overrides.edited_frame = cc.upload_input(server, edited)
                wf = cc.apply_overrides(workflow, overrides)
                print(f"[demo] ComfyUI at http://{server.address}; queueing {path.name} on {Path(video).name}")
                result = cc.queue_and_wait(server, wf, timeout=args.timeout, out_dir=str(out))
        except (cc.WorkflowError, comfy_host.HostError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    report = "\n\n".join(t for _, t in result["texts"])
    if checkpoint is None:
        report = TINY_BANNER + "\n\n" + report
    (out / "metrics_report.txt").write_text(report + "\n")
    (out / "run.json").write_text(json.dumps({"workflow": path.name, "checkpoint": checkpoint or "tiny test model",
                                              **{k: result[k] for k in ("prompt_id", "files", "downloaded",
                                                                        "elapsed_s")}}, indent=1, default=str))
    print(report)
    print(f"\n[demo] finished in {result['elapsed_s']:.0f} s; files in {out}:")
    for p in result["downloaded"]:
        print("   ", p)
    print("   ", out / "metrics_report.txt")
    if checkpoint is None:
        print("\n" + TINY_BANNER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
