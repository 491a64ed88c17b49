#!/usr/bin/env python3
"""Queue an API-format workflow of this pack on ComfyUI, follow its progress and collect its outputs.

Against a running ComfyUI (local or remote)::

    python scripts/run_workflow.py workflows/api/tokenflow_stem.json --server 127.0.0.1:8188 \\
        --checkpoint v1-5-pruned-emaonly.safetensors --video ~/clips/wolf.mp4 \\
        --target-prompt "a marble statue of a wolf" --frames 16 --size 512x512 --out results/

Or let the script start ComfyUI for the run (with that ComfyUI's own Python) and stop it afterwards::

    python scripts/run_workflow.py WORKFLOW.json --start ~/ComfyUI --cpu --tiny-model --out results/

``--video`` and ``--edited-frame`` take files (or a frame folder) anywhere on disk and upload them into
the server's input folder. The overrides are described in comfy_client.py. Exit status: 0 on success,
1 when ComfyUI rejects the prompt or the run fails, is interrupted or times out, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import comfy_client as cc
import comfy_host


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Queue an API-format ComfyUI workflow and collect its outputs.",
                                 epilog="Overrides are described in scripts/comfy_client.py.")
    ap.add_argument("workflow", help="API-format workflow JSON (workflows/api/*.json)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--server", default=None, help="running ComfyUI, HOST:PORT (default 127.0.0.1:8188)")
    where.add_argument("--start", metavar="COMFYUI_DIR", help="start ComfyUI from this folder for the run")
    ap.add_argument("--python", help="interpreter for --start (default: $PYTHON, a venv of that ComfyUI, or this one)")
    ap.add_argument("--port", type=int, default=0, help="port for --start; 0 picks a free one (default)")
    ap.add_argument("--cpu", action="store_true", help="pass --cpu to the started ComfyUI")
    ap.add_argument("--extra-args", default="", help="more arguments for the started main.py (one string)")
    ap.add_argument("--server-log", help="file for the started server's output (default: a temp file)")
    model = ap.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="ckpt_name of the checkpoint loaders (in ComfyUI's models/checkpoints)")
    model.add_argument("--tiny-model", action="store_true",
                       help="swap the checkpoint loaders for the pack's tiny random test models (not real edits)")
    ap.add_argument("--video-checkpoint", help="ckpt_name of ImageOnlyCheckpointLoader (SVD) when the graph "
                                               "also has an SD1.5 loader")
    cc.add_override_arguments(ap)
    ap.add_argument("--edited-frame", help="an image file: the edited first frame (Videoshop workflows; uploaded)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                    help="set any input (JSON value when it parses); repeatable, applied last")
    ap.add_argument("--out", help="download the output files into this folder")
    ap.add_argument("--timeout", type=float, default=None, help="overall limit in seconds (start + run)")
    ap.add_argument("--save-workflow", help="also write the workflow after overrides to this file")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    log = None if a.quiet else print
    try:
        workflow = cc.load_workflow(a.workflow)
        overrides = cc.overrides_from_arguments(a, checkpoint=a.checkpoint, video_checkpoint=a.video_checkpoint,
                                                tiny_model=a.tiny_model, sets=a.sets)
        # check everything that needs no server before starting one (placeholders for names of uploads)
        cc.apply_overrides(workflow, dataclasses.replace(overrides, video=a.video and "check",
                                                         edited_frame=a.edited_frame and "check"))
        if a.video and Path(a.video).expanduser().exists():
            cc.check_video_path(a.video)
        if a.edited_frame and not Path(a.edited_frame).expanduser().is_file():
            raise cc.WorkflowError(f"--edited-frame {a.edited_frame}: no such image file")
    except cc.WorkflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    t0 = time.monotonic()
    handle = None
    try:
        with contextlib.ExitStack() as stack:
            if a.start:
                start_timeout = 300.0 if a.timeout is None else a.timeout
                handle = stack.enter_context(comfy_host.start_server(
                    a.start, python=a.python or comfy_host.host_python(Path(a.start)), port=a.port, cpu=a.cpu,
                    extra_args=shlex.split(a.extra_args), timeout=start_timeout, log_path=a.server_log, log=log))
                server = handle.address
            else:
                server = a.server or "127.0.0.1:8188"
            if a.video:
                if Path(a.video).expanduser().exists():
                    overrides.video = cc.upload_input(server, a.video)
                    if log:
                        log(f"uploaded {a.video} as {overrides.video!r}")
                else:
                    overrides.video = a.video  # a name already in the server's input folder
            if a.edited_frame:
                overrides.edited_frame = cc.upload_input(server, a.edited_frame)
            changes: List[str] = []
            wf = cc.apply_overrides(workflow, overrides, changes)
            for c in changes:
                if log:
                    log(f"override: {c}")
            if a.save_workflow:
                Path(a.save_workflow).write_text(json.dumps(wf, indent=2))
            left = None if a.timeout is None else max(a.timeout - (time.monotonic() - t0), 1.0)
            result = cc.queue_and_wait(server, wf, timeout=left, out_dir=a.out, log=log)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (cc.WorkflowError, comfy_host.HostError) as e:
        print(f"error: {e}", file=sys.stderr)
        # a crash or an unknown node type (a pack that failed to import) is explained in the log;
        # an execution error already carries its traceback
        unknown_type = isinstance(e, cc.PromptRejected) and "does not know node type" in str(e)
        if handle is not None and (unknown_type or not isinstance(e, (cc.PromptRejected, cc.ExecutionFailed))):
            tail = handle.log_tail(20)
            if tail:
                print(f"--- last lines of the server log ({handle.log_path}) ---\n{tail}", file=sys.stderr)
        return 1

    for nid, text in result["texts"]:
        print(f"text output of node {nid}:\n{text}")
    for f in result["files"]:
        if not a.out:
            print(f"output: {f['type']}/{f['subfolder'] + '/' if f['subfolder'] else ''}{f['filename']}")
    for p in result["downloaded"]:
        print(f"saved {p}")
    print(f"done in {result['elapsed_s']:.1f} s (prompt {result['prompt_id']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
