#!/usr/bin/env python3
"""A small client library for ComfyUI's HTTP API: workflow files and overrides, upload, queue with
websocket progress, download. Needs the standard library and ``websocket-client`` (queueing only).

Used by ``run_workflow.py`` (its command line), ``demo.py`` and the end-to-end tests. Starting a
server lives in ``comfy_host.py``.

Overrides (``apply_overrides(workflow, Overrides(...))``) change a deep copy of an API-format workflow
(``{node_id: {"class_type", "inputs", "_meta"}}``); every override that finds nothing to act on raises
``WorkflowError`` so a typo never silently runs the unmodified graph. What each one touches:

``checkpoint``    ``ckpt_name`` of every checkpoint loader (CheckpointLoaderSimple; ImageOnlyCheckpointLoader
                  only when the graph has no CheckpointLoaderSimple, or use ``video_checkpoint``).
``tiny_model``    every checkpoint loader is replaced, under the same node id, by the pack's tiny seeded test
                  model of the same family and output order (SD1.5: MODEL, CLIP, VAE; SVD: MODEL,
                  CLIP_VISION, VAE), and every metrics node gets the tiny model's notice in its report.
``video``         ``video`` of every video loader (a name inside ComfyUI's input folder).
``edited_frame``  ``image`` of every LoadImage titled "edited first frame".
``frames``        every input that carries the frame count (the loader's frame_load_cap, SVD's video_frames).
``size``          every input that carries the picture size (the loader's custom_width/height, SVD's width/height).
``steps``         every ``steps`` input of the graph.
``source_prompt`` / ``target_prompt``  ``text`` of the CLIPTextEncode nodes titled "... source prompt ..." /
                  "... target prompt ..." (case-insensitive; "_" and "-" count as spaces; node ids too).
``sets``          ``NODE_ID.INPUT=VALUE`` for any input, VALUE parsed as JSON when it can be; applied last.
"""
from __future__ import annotations

import contextlib
import copy
import json
import mimetypes
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

class WorkflowError(Exception):
    """Base of every failure the runner reports (message is meant for people)."""


class PromptRejected(WorkflowError):
    """POST /prompt answered with an error (validation failed, unknown node, ...)."""

    def __init__(self, message: str, response: Any = None):
        super().__init__(message)
        self.response = response


class ExecutionFailed(WorkflowError):
    """The server reported ``execution_error`` for our prompt."""

    def __init__(self, message: str, data: Optional[dict] = None):
        super().__init__(message)
        self.data = data or {}


class ExecutionInterrupted(WorkflowError):
    """The run was interrupted (Cancel in the UI, POST /interrupt, or our own timeout)."""


class RunTimeout(WorkflowError):
    """The overall time limit passed."""


class ServerUnreachable(WorkflowError):
    """No HTTP answer from the server (not running, wrong address, crashed)."""



# ---------------------------------------------------------------------------------------------
# workflow files and overrides



# video loader class -> its file input
VIDEO_LOADERS = {"STEMVideoLoad": "video", "VHS_LoadVideo": "video", "LoadVideo": "file"}
PROMPT_ENCODERS = ("CLIPTextEncode",)
IMAGE_LOADER = "LoadImage"
EDITED_FRAME_MARK = "edited first frame"
METRICS_NODE = "STEMVideoMetrics"

# The loaders the runner can swap for a tiny test model: (tiny class, its widgets, output slots both share).
TINY_SWAPS = {
    "CheckpointLoaderSimple": ("STEMTinyTestModel", {"seed": 0, "model_channels": 32}, {0: "MODEL", 1: "CLIP", 2: "VAE"}),
    "ImageOnlyCheckpointLoader": ("STEMTinySVDModel", {"seed": 0}, {0: "MODEL", 1: "CLIP_VISION", 2: "VAE"}),
}
SD_LOADER, VIDEO_LOADER = "CheckpointLoaderSimple", "ImageOnlyCheckpointLoader"
TINY_NOTICE = ("Output made with the TINY RANDOM TEST MODEL (swapped in by the runner): random "
               "weights of the real architecture and a pooling stand-in VAE. It shows the pipeline working, "
               "not a real edit.")

# class -> (frame-count inputs, (width input, height input)) the runner's --frames / --size set.
FRAME_INPUTS = {"STEMVideoLoad": ("frame_load_cap",), "VHS_LoadVideo": ("frame_load_cap",),
                "SVD_img2vid_Conditioning": ("video_frames",)}
SIZE_INPUTS = {"STEMVideoLoad": ("custom_width", "custom_height"), "VHS_LoadVideo": ("custom_width", "custom_height"),
               "SVD_img2vid_Conditioning": ("width", "height"),
               "ImageScale": ("width", "height")}


@dataclass
class Overrides:
    checkpoint: Optional[str] = None
    video_checkpoint: Optional[str] = None
    tiny_model: bool = False
    video: Optional[str] = None
    edited_frame: Optional[str] = None
    frames: Optional[int] = None
    size: Optional[Tuple[int, int]] = None
    steps: Optional[int] = None
    source_prompt: Optional[str] = None
    target_prompt: Optional[str] = None
    sets: List[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# files


def load_workflow(path: str) -> Dict[str, dict]:
    """Read an API-format workflow (``{node_id: {"class_type", "inputs", ...}}``).

    Also accepts ``{"prompt": {...}}`` as POSTed to /prompt. A UI-format file (with "nodes" and
    "links") is refused with a hint, since only the editor can translate it."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise WorkflowError(f"cannot read workflow {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise WorkflowError(f"{path} is not valid JSON: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
        data = data["prompt"]
    check_api_format(data, path)
    return data


def check_api_format(workflow: Any, name: str = "workflow") -> None:
    if not isinstance(workflow, dict):
        raise WorkflowError(f"{name}: expected a JSON object of nodes, got {type(workflow).__name__}")
    if isinstance(workflow.get("nodes"), list) and "links" in workflow:
        raise WorkflowError(
            f"{name} is a UI-format workflow (the editor's save format). Queue its API-format twin "
            "(workflows/api/ in this pack) or export one from the editor with 'Save (API Format)' "
            "(enable dev mode options in the settings to see it)."
        )
    if not workflow:
        raise WorkflowError(f"{name} has no nodes")
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(
                f"{name}: node {node_id!r} is not an API-format node (needs 'class_type' and 'inputs')"
            )


def add_override_arguments(parser) -> None:
    """The command-line options of the overrides that both run_workflow.py and demo.py take."""
    parser.add_argument("--video", help="a video file or frame folder anywhere on disk (uploaded to the server)")
    parser.add_argument("--frames", type=int, help="frames to load (frame_load_cap and every frame count)")
    parser.add_argument("--size", help="WIDTHxHEIGHT, multiples of 8 (every size input)")
    parser.add_argument("--steps", type=int, help="steps of every node that has them (DDIM: 50 in the paper)")
    parser.add_argument("--source-prompt", help="text of the CLIPTextEncode titled '... source prompt ...' "
                                                "(the prompt that describes your video)")
    parser.add_argument("--target-prompt", help="text of the CLIPTextEncode titled '... target prompt ...' "
                                                "(what the video should become)")


def overrides_from_arguments(args, **more) -> "Overrides":
    """Overrides from parsed add_override_arguments options (the video is filled in after its upload)."""
    return Overrides(frames=args.frames, size=parse_size(args.size) if args.size else None, steps=args.steps,
                     source_prompt=args.source_prompt, target_prompt=args.target_prompt, **more)


# ---------------------------------------------------------------------------------------------
# helpers


def title_of(node: dict) -> str:
    meta = node.get("_meta")
    return str(meta.get("title", "")) if isinstance(meta, dict) else ""


def _normalise(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", s.lower())).strip()


def _marked(node_id: str, node: dict, mark: str) -> bool:
    return mark in _normalise(title_of(node)) or mark in _normalise(str(node_id))


def describe_node(node_id: str, node: dict) -> str:
    title = title_of(node)
    cls = node.get("class_type", "?")
    return f"{node_id} ({cls}{', ' + repr(title) if title and title != cls else ''})"


def id_key(s: str):
    return (0, int(s), "") if str(s).isdigit() else (1, 0, str(s))


def _links_to(workflow: dict, target_id: str) -> List[Tuple[str, str, int]]:
    """(node id, input name, output slot) of every input linked to ``target_id``."""
    found = []
    for nid, node in workflow.items():
        for name, value in node.get("inputs", {}).items():
            if (isinstance(value, list) and len(value) == 2 and str(value[0]) == str(target_id)
                    and isinstance(value[1], int)):
                found.append((nid, name, value[1]))
    return found


def parse_set(spec: str) -> Tuple[str, str, Any]:
    """``"12.seed=42"`` -> ("12", "seed", 42). VALUE is JSON when it parses, else a string."""
    key, sep, raw = spec.partition("=")
    node_id, dot, name = key.strip().partition(".")
    if not sep or not dot or not node_id or not name:
        raise WorkflowError(f"--set {spec!r}: expected NODE_ID.INPUT=VALUE, e.g. --set 12.seed=42")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return node_id, name.strip(), value


def parse_size(text: str) -> Tuple[int, int]:
    """'128x96' -> (128, 96); both sides positive multiples of 8 (SD latents are 1/8 of the picture)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", str(text))
    if not m:
        raise WorkflowError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. --size 128x128")
    w, h = int(m.group(1)), int(m.group(2))
    if w < 8 or h < 8 or w % 8 or h % 8:
        def near(v):
            return max(8, int(round(v / 8)) * 8)
        raise WorkflowError(f"--size {w}x{h}: both sides must be multiples of 8 (at least 8), because the "
                            f"latents are 1/8 of the picture; use --size {near(w)}x{near(h)}")
    return w, h


def _loaders(wf: dict) -> List[str]:
    return [nid for nid, n in wf.items() if n["class_type"] in TINY_SWAPS]


def _positive(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WorkflowError(f"{what} must be a whole number >= 1, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# the overrides


def apply_overrides(workflow: Dict[str, dict], o: Overrides, changes: Optional[List[str]] = None) -> Dict[str, dict]:
    """A changed deep copy of ``workflow`` (see the module docstring); descriptions of the changes are
    appended to ``changes`` when given."""
    check_api_format(workflow)
    wf = copy.deepcopy(workflow)
    log = changes.append if changes is not None else (lambda s: None)
    if o.tiny_model and (o.checkpoint or o.video_checkpoint):
        raise WorkflowError("--tiny-model and --checkpoint exclude each other: the tiny model replaces the checkpoint")

    def set_input(nid, name, value):
        wf[nid].setdefault("inputs", {})[name] = value
        log(f"node {nid}: {name} = {value!r}")

    if o.checkpoint is not None or o.video_checkpoint is not None:
        by_class = {cls: [nid for nid, n in wf.items() if n["class_type"] == cls] for cls in (SD_LOADER, VIDEO_LOADER)}
        targets = []
        if o.checkpoint is not None:
            cls = SD_LOADER if by_class[SD_LOADER] else VIDEO_LOADER
            if not by_class[cls]:
                raise WorkflowError(f"--checkpoint: the workflow has no {SD_LOADER} or {VIDEO_LOADER} node")
            targets += [(nid, o.checkpoint) for nid in by_class[cls]]
        if o.video_checkpoint is not None:
            if not by_class[VIDEO_LOADER]:
                raise WorkflowError(f"--video-checkpoint: the workflow has no {VIDEO_LOADER} node")
            targets += [(nid, o.video_checkpoint) for nid in by_class[VIDEO_LOADER]]
        for nid, name in targets:
            set_input(nid, "ckpt_name", name)

    if o.tiny_model:
        loaders = _loaders(wf)
        if not loaders:
            raise WorkflowError(f"--tiny-model: the workflow has no checkpoint loader ({', '.join(TINY_SWAPS)}) "
                                f"to replace")
        for nid in loaders:
            tiny_cls, widgets, slots = TINY_SWAPS[wf[nid]["class_type"]]
            bad = [(d, name, slot) for d, name, slot in _links_to(wf, nid) if slot not in slots]
            if bad:
                d, name, slot = bad[0]
                raise WorkflowError(f"--tiny-model: node {d} input {name!r} uses output slot {slot} of node {nid}, "
                                    f"which {tiny_cls} does not have ({', '.join(f'{t}={s}' for s, t in slots.items())})")
            meta = dict(wf[nid].get("_meta") or {})
            meta["title"] = f"{tiny_cls} (replaces {wf[nid]['class_type']})"
            wf[nid] = {"class_type": tiny_cls, "inputs": dict(widgets), "_meta": meta}
            log(f"node {nid}: replaced by the tiny test model {tiny_cls}")
        for nid, n in wf.items():
            if n["class_type"] == METRICS_NODE:
                n.setdefault("inputs", {})["notice"] = TINY_NOTICE
        log("metrics reports carry the tiny model's notice")

    if o.video is not None:
        hits = [nid for nid, n in wf.items() if n["class_type"] in VIDEO_LOADERS]
        if not hits:
            raise WorkflowError(f"--video: the workflow has no {' / '.join(VIDEO_LOADERS)} node")
        for nid in hits:
            set_input(nid, VIDEO_LOADERS[wf[nid]["class_type"]], o.video)

    if o.edited_frame is not None:
        hits = [nid for nid, n in wf.items() if n["class_type"] == IMAGE_LOADER and _marked(nid, n, EDITED_FRAME_MARK)]
        if not hits:
            raise WorkflowError(f"--edited-frame: no {IMAGE_LOADER} node is titled '{EDITED_FRAME_MARK}'")
        for nid in hits:
            set_input(nid, "image", o.edited_frame)

    frames = _positive(o.frames, "--frames")
    if frames is not None:
        hits = [(nid, name) for nid, n in wf.items() for name in FRAME_INPUTS.get(n["class_type"], ())]
        if not hits:
            raise WorkflowError("--frames: the workflow has no node that carries a frame count")
        for nid, name in hits:
            set_input(nid, name, frames)

    if o.size is not None:
        w, h = o.size
        hits = [(nid, SIZE_INPUTS[n["class_type"]]) for nid, n in wf.items() if n["class_type"] in SIZE_INPUTS]
        if not hits:
            raise WorkflowError("--size: the workflow has no node that carries the picture size")
        for nid, (wname, hname) in hits:
            set_input(nid, wname, w)
            set_input(nid, hname, h)

    steps = _positive(o.steps, "--steps")
    if steps is not None:
        hits = [nid for nid, n in wf.items() if "steps" in n.get("inputs", {})
                and not isinstance(n["inputs"]["steps"], list)]
        if not hits:
            raise WorkflowError("--steps: the workflow has no node with a steps input")
        for nid in hits:
            set_input(nid, "steps", steps)

    for which, text in (("source", o.source_prompt), ("target", o.target_prompt)):
        if text is None:
            continue
        mark = f"{which} prompt"
        encoders = [(nid, n) for nid, n in wf.items() if n["class_type"] in PROMPT_ENCODERS]
        hits = [nid for nid, n in encoders if _marked(nid, n, mark)]
        if not hits:
            known = ", ".join(describe_node(nid, n) for nid, n in encoders) or "none"
            raise WorkflowError(
                f"--{which}-prompt: no {'/'.join(PROMPT_ENCODERS)} node is marked as the {mark}; give one a "
                f"title containing '{mark}' (right-click > Title in the editor). Text encoders found: {known}"
            )
        for nid in hits:
            set_input(nid, "text", text)

    for spec in o.sets:
        nid, name, value = parse_set(spec)
        if nid not in wf:
            raise WorkflowError(f"--set {spec!r}: no node {nid!r}; node ids are {', '.join(sorted(wf, key=id_key))}")
        set_input(nid, name, value)
    return wf


def checkpoint_names(workflow: Dict[str, dict]) -> Dict[str, List[str]]:
    """{loader class: [ckpt_name, ...]} of the checkpoint loaders in a workflow (for a pre-flight check)."""
    out: Dict[str, List[str]] = {}
    for n in workflow.values():
        if n["class_type"] in TINY_SWAPS and isinstance(n.get("inputs", {}).get("ckpt_name"), str):
            out.setdefault(n["class_type"], []).append(n["inputs"]["ckpt_name"])
    return out


# ---------------------------------------------------------------------------------------------
# error texts


def format_prompt_error(response: Any, workflow: Optional[dict] = None) -> str:
    """Readable text of a rejected /prompt: the error, then each node's errors.

    response: the JSON body of the 400 answer (``{"error": ..., "node_errors": {...}}``) or raw text."""
    if not isinstance(response, dict):
        text = str(response).strip() or "(empty answer)"
        return f"ComfyUI rejected the prompt: {text}"
    err = response.get("error")
    lines = []
    if isinstance(err, dict):
        head = err.get("message") or err.get("type") or "error"
        lines.append(f"ComfyUI rejected the prompt: {head}")
        details = str(err.get("details") or "").strip()
        node_errors = response.get("node_errors") or {}
        # the details repeat the node errors; show them only when there is nothing per node
        if details and not node_errors:
            lines.extend(f"  {d}" for d in details.splitlines())
    else:
        lines.append(f"ComfyUI rejected the prompt: {err if err else 'unknown error'}")
    node_errors = response.get("node_errors") or {}
    if isinstance(node_errors, dict):
        for nid in sorted(node_errors, key=id_key):
            entry = node_errors[nid] or {}
            cls = entry.get("class_type") or (workflow or {}).get(nid, {}).get("class_type", "?")
            title = title_of((workflow or {}).get(nid, {}))
            label = f"node {nid} ({cls}{', ' + repr(title) if title and title != cls else ''})"
            lines.append(f"{label}:")
            for e in entry.get("errors", []) or []:
                msg = e.get("message", "") if isinstance(e, dict) else str(e)
                det = e.get("details", "") if isinstance(e, dict) else ""
                lines.append(f"  - {msg}{': ' + str(det) if det else ''}")
    return "\n".join(lines)


def format_execution_error(data: dict, traceback_lines: int = 4) -> str:
    """Readable text of an ``execution_error`` message: node, exception, last traceback lines."""
    nid = data.get("node_id", "?")
    ntype = data.get("node_type", "?")
    etype = data.get("exception_type") or "error"
    msg = str(data.get("exception_message", "")).strip()
    lines = [f"Execution failed in node {nid} ({ntype}): {etype}: {msg}"]
    tb = data.get("traceback") or []
    if isinstance(tb, str):
        tb = [tb]
    tail = "".join(tb[-traceback_lines:]).rstrip()
    if tail:
        lines.append("Traceback (most recent call last, shortened):")
        lines.extend("  " + l for l in tail.splitlines())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# HTTP


def _base(server: Any) -> Tuple[str, str]:
    """'127.0.0.1:8188' / 'http://host:port' / a ServerHandle -> (http base, ws base)."""
    s = str(server).strip().rstrip("/")
    if "://" not in s:
        s = "http://" + s
    u = urllib.parse.urlsplit(s)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise WorkflowError(f"bad server address {server!r}; expected HOST:PORT or http://HOST:PORT")
    ws_scheme = "wss" if u.scheme == "https" else "ws"
    return f"{u.scheme}://{u.netloc}", f"{ws_scheme}://{u.netloc}"


# local servers must not go through an HTTP proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(method: str, url: str, body: Any = None, timeout: float = 30.0,
          raw_body: Optional[bytes] = None, content_type: Optional[str] = None) -> Tuple[int, bytes]:
    data = raw_body
    headers = {"Content-Type": content_type} if content_type else {}
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerUnreachable(f"cannot reach ComfyUI at {url}: {reason} (is it running? or use --start)") from e


def _get_json(url: str, timeout: float = 30.0) -> Any:
    status, raw = _http("GET", url, timeout=timeout)
    if status != 200:
        raise WorkflowError(f"GET {url} answered {status}: {raw[:300]!r}")
    return json.loads(raw.decode("utf-8"))


def object_info(server: Any, class_type: str, timeout: float = 30.0) -> dict:
    """/object_info of one node class (its inputs with the server's current choices, e.g. checkpoint names)."""
    http, _ = _base(server)
    info = _get_json(f"{http}/object_info/{urllib.parse.quote(class_type)}", timeout=timeout)
    if class_type not in info:
        raise WorkflowError(f"the server does not know node type {class_type}")
    return info[class_type]


def check_against_server(server: Any, workflow: dict, timeout: float = 30.0) -> None:
    """Fail early, and clearly, on class types the server does not know (an old ComfyUI answers
    such a prompt with a bare HTTP 500) and on checkpoint names missing from its models folder."""
    http, _ = _base(server)
    known = _get_json(f"{http}/object_info", timeout=timeout)
    missing = sorted({n["class_type"] for n in workflow.values()} - set(known))
    if missing:
        where = [f"{nid} ({n['class_type']})" for nid, n in sorted(workflow.items(), key=lambda kv: id_key(kv[0]))
                 if n["class_type"] in missing]
        stem = any(m.startswith("STEM") for m in missing)
        hint = (" Is the STEM pack installed in ComfyUI's custom_nodes/ folder, and did it load "
                "(see the server log)?" if stem else " Install the custom nodes that provide them.")
        raise PromptRejected(
            f"the server does not know node type(s) {', '.join(missing)} used by node(s) {', '.join(where)}.{hint}"
        )
    for cls, names in checkpoint_names(workflow).items():
        try:
            available = list(known[cls]["input"]["required"]["ckpt_name"][0])
        except (KeyError, IndexError, TypeError):
            continue
        for name in names:
            if name not in available:
                holds = f"holds: {', '.join(available)}" if available else "is empty"
                raise PromptRejected(
                    f"checkpoint {name!r} is not in the server's models/checkpoints folder, which {holds}. "
                    f"Put the file into ComfyUI's models/checkpoints (or pass one of those names with "
                    f"--checkpoint); without any checkpoint, --tiny-model runs the pack's tiny test model.")


def _interrupt(http: str, prompt_id: str, running: bool) -> None:
    """Best effort: take our prompt off the queue, or interrupt it if it is running."""
    with contextlib.suppress(Exception):
        if running:
            _http("POST", f"{http}/interrupt", {"prompt_id": prompt_id}, timeout=5)
        else:
            _http("POST", f"{http}/queue", {"delete": [prompt_id]}, timeout=5)


# ---------------------------------------------------------------------------------------------
# inputs: check and upload

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
UPLOAD_SUBFOLDER = "stem_uploads"


def check_video_path(path: str) -> Path:
    """A local video file or frame folder for --video; WorkflowError naming the problem otherwise.
    When PyAV is importable the file is opened, so a text file named .mp4 is refused here."""
    p = Path(path).expanduser()
    if not p.exists():
        raise WorkflowError(f"--video {path}: no such file or folder")
    if p.is_dir():
        if not any(c.suffix.lower() in IMAGE_EXTENSIONS for c in p.iterdir() if c.is_file()):
            raise WorkflowError(f"--video {path}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                f"give a video file or a folder of frames")
        return p
    if p.suffix.lower() not in VIDEO_EXTENSIONS:
        raise WorkflowError(f"--video {path}: {p.suffix or 'no extension'} is not a video file "
                            f"({', '.join(VIDEO_EXTENSIONS)}) or a frame folder")
    try:
        import av  # optional: only where PyAV is installed
    except ImportError:
        return p
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise WorkflowError(f"--video {path}: the file has no video stream")
    except WorkflowError:
        raise
    except Exception as e:  # PyAV raises its own error classes for every kind of broken file
        raise WorkflowError(f"--video {path}: could not open it as a video ({type(e).__name__}: {e}); "
                            f"re-export it as mp4 (H.264)") from None
    return p


def _multipart(fields: Dict[str, str], file_field: str, filename: str, payload: bytes) -> Tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode())
    ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; filename=\"{filename}\"\r\n"
                 f"Content-Type: {ctype}\r\n\r\n".encode() + payload + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def upload_file(server: Any, path: Path, subfolder: str = UPLOAD_SUBFOLDER, timeout: float = 300.0) -> str:
    """POST one local file to the server's input folder (/upload/image stores any file; overwrites our own
    earlier upload of the same name). Returns its name relative to the input folder."""
    http, _ = _base(server)
    body, ctype = _multipart({"type": "input", "subfolder": subfolder, "overwrite": "true"}, "image",
                             path.name, path.read_bytes())
    status, raw = _http("POST", f"{http}/upload/image", raw_body=body, content_type=ctype, timeout=timeout)
    if status != 200:
        raise WorkflowError(f"uploading {path} to {http} failed: HTTP {status} {raw[:200]!r}")
    answer = json.loads(raw.decode("utf-8"))
    return "/".join(p for p in (answer.get("subfolder") or "", answer["name"]) if p)


def upload_input(server: Any, path: str, timeout: float = 300.0) -> str:
    """Upload a video file, a frame folder (every image, into a folder of the same name) or an image into
    the server's input folder, local or remote. Returns the name to give the loader node."""
    p = Path(path).expanduser()
    if p.is_dir():
        images = sorted(c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS)
        for image in images:
            upload_file(server, image, subfolder=f"{UPLOAD_SUBFOLDER}/{p.name}", timeout=timeout)
        return f"{UPLOAD_SUBFOLDER}/{p.name}"
    return upload_file(server, p, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# queue and follow


class _Progress:
    """Prints node starts and step progress: one updating line on a terminal, every 10% otherwise."""

    def __init__(self, workflow: dict, log: Optional[Callable[[str], None]], stream=None):
        self.wf = workflow
        self.log = log
        self.stream = stream or sys.stdout
        self.tty = log is print and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.open_line = False
        self.last_decile = None

    def _label(self, nid) -> str:
        node = self.wf.get(str(nid), {})
        title = title_of(node)
        cls = node.get("class_type", "?")
        return f"{nid} {cls}" + (f" '{title}'" if title and title != cls else "")

    def _end_line(self):
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False

    def line(self, text: str):
        if self.log is None:
            return
        self._end_line()
        self.log(text)

    def executing(self, nid):
        self.last_decile = None
        self.line(f"executing node {self._label(nid)}")

    def progress(self, nid, value: int, maximum: int):
        if self.log is None:
            return
        label = self._label(nid) if nid is not None else ""
        text = f"  [{label}] {value}/{maximum}" if label else f"  {value}/{maximum}"
        if self.tty:
            self.stream.write("\r" + text.ljust(60))
            self.stream.flush()
            self.open_line = True
            return
        decile = int(10 * value / maximum) if maximum else 10
        if decile != self.last_decile or value == maximum:
            self.last_decile = decile
            self.log(text)

    def done(self):
        self._end_line()


def _output_files(outputs: dict) -> List[Dict[str, str]]:
    """Every {filename, subfolder, type} entry in a history's outputs, with its node id."""
    files = []
    for nid, ui in (outputs or {}).items():
        if not isinstance(ui, dict):
            continue
        for key, items in ui.items():
            if not isinstance(items, list):
                continue
            for it in items:
                if isinstance(it, dict) and "filename" in it:
                    files.append({"node": str(nid), "key": key, "filename": str(it["filename"]),
                                  "subfolder": str(it.get("subfolder", "") or ""),
                                  "type": str(it.get("type", "output") or "output")})
    return files


def _output_texts(outputs: dict) -> List[Tuple[str, str]]:
    texts = []
    for nid, ui in (outputs or {}).items():
        if isinstance(ui, dict) and "text" in ui:
            items = ui["text"] if isinstance(ui["text"], list) else [ui["text"]]
            texts.extend((str(nid), str(t)) for t in items if isinstance(t, (str, int, float)))
    return texts


def _safe_part(s: str) -> str:
    s = re.sub(r"[^\w.\- ]+", "_", s).strip(" .")
    return s or "_"


def local_output_path(out_dir: str, f: Dict[str, str]) -> str:
    """Where ``download_outputs`` puts an output file: out_dir/<subfolder>/<filename>, with '..' and
    odd characters removed so that nothing lands outside out_dir."""
    parts = [_safe_part(p) for p in re.split(r"[\\/]+", f.get("subfolder", "")) if p and p not in (".", "..")]
    name = _safe_part(re.split(r"[\\/]+", f["filename"])[-1])
    return os.path.join(out_dir, *parts, name)


def download_outputs(server: Any, files: Sequence[Dict[str, str]], out_dir: str,
                     timeout: float = 120.0) -> List[str]:
    """Fetch each output file through GET /view into ``out_dir/<subfolder>/<filename>``
    (names sanitised: nothing is written outside out_dir). Returns the local paths."""
    http, _ = _base(server)
    paths = []
    for f in files:
        q = urllib.parse.urlencode({"filename": f["filename"], "subfolder": f["subfolder"], "type": f["type"]})
        status, raw = _http("GET", f"{http}/view?{q}", timeout=timeout)
        if status != 200:
            raise WorkflowError(f"GET /view?{q} answered {status}")
        dest = local_output_path(out_dir, f)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as fh:
            fh.write(raw)
        paths.append(dest)
    return paths


def queue_and_wait(server: Any, workflow: Dict[str, dict], timeout: Optional[float] = None,
                   out_dir: Optional[str] = None, client_id: Optional[str] = None,
                   log: Optional[Callable[[str], None]] = print, check_nodes: bool = True) -> Dict[str, Any]:
    """Queue ``workflow`` on ``server`` and block until it finishes.

    server: "HOST:PORT", "http://HOST:PORT" or the handle from ``start_server``.
    timeout: seconds for the whole call (None = no limit); on expiry the prompt is interrupted.
    out_dir: when given, every output file of the history is downloaded there.
    log: called with progress lines (None = silent).
    Returns {"prompt_id", "node_errors" (outputs the server refused but did not need),
    "outputs" (history outputs by node id), "executed" (outputs as they
    arrived on the websocket), "files" (filename/subfolder/type/node dicts), "texts" ((node, text)
    pairs of `text` UI outputs), "downloaded" (local paths), "elapsed_s", "cached" (ids of the nodes the server
    reused from an earlier run), "ran" (ids of the nodes that executed, in order), "progress" ((node, value, max) of every progress message, in order),
    "previews" (binary preview images received while each node ran, by node id)}.
    Raises PromptRejected, ExecutionFailed, ExecutionInterrupted, RunTimeout or WorkflowError.
    """
    import websocket  # websocket-client; imported here so the rest works without it

    check_api_format(workflow)
    http, ws_base = _base(server)
    t0 = time.monotonic()
    deadline = None if timeout is None else t0 + float(timeout)

    def remaining(default: float = 30.0) -> float:
        if deadline is None:
            return default
        left = deadline - time.monotonic()
        if left <= 0:
            raise RunTimeout(f"timed out after {timeout:g} s")
        return min(left, default)

    if check_nodes:
        check_against_server(server, workflow, timeout=remaining())

    client_id = client_id or uuid.uuid4().hex
    host = urllib.parse.urlsplit(http).hostname
    # connect first so that no message about our prompt can be missed
    try:
        ws = websocket.create_connection(f"{ws_base}/ws?clientId={client_id}", timeout=remaining(),
                                         http_no_proxy=[host])
    except (OSError, websocket.WebSocketException) as e:
        raise WorkflowError(f"cannot open the websocket {ws_base}/ws: {e}") from e
    progress = _Progress(workflow, log)
    prompt_id = None
    running = False
    executed: Dict[str, Any] = {}
    cached: List[str] = []
    ran: List[str] = []
    steps: List[Tuple[str, int, int]] = []
    previews: Dict[str, int] = {}
    current = None
    try:
        status, raw = _http("POST", f"{http}/prompt", {"prompt": workflow, "client_id": client_id},
                            timeout=remaining(60.0))
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            body = raw.decode("utf-8", "replace")
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            text = format_prompt_error(body, workflow)
            if status >= 500:
                text += f"\n(HTTP {status}: the server failed while validating; see its log)"
            raise PromptRejected(text, body)
        prompt_id = body["prompt_id"]
        node_errors = body.get("node_errors") or {}
        if node_errors and log:
            log("warning: some outputs were rejected and will not run:\n"
                + format_prompt_error({"error": "partial", "node_errors": body["node_errors"]}, workflow))
        if log:
            log(f"queued prompt {prompt_id}")

        while True:
            ws.settimeout(max(0.1, min(remaining(5.0), 5.0)))
            try:
                msg = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError) as e:
                raise WorkflowError(f"the server closed the websocket during the run (did it crash?): {e}") from e
            if not isinstance(msg, str):
                if running and current is not None:  # binary preview images (shown on the running node)
                    previews[current] = previews.get(current, 0) + 1
                continue
            try:
                m = json.loads(msg)
            except ValueError:
                continue
            mtype, data = m.get("type"), m.get("data") or {}
            pid = data.get("prompt_id") if isinstance(data, dict) else None
            if pid is not None and pid != prompt_id:
                continue
            if mtype == "execution_start":
                running = True
            elif mtype == "execution_cached":
                nodes = data.get("nodes") or []
                cached.extend(str(n) for n in nodes)
                if nodes:
                    progress.line(f"cached: {len(nodes)} node(s) reused from an earlier run")
            elif mtype == "executing":
                if data.get("node") is None:
                    if pid == prompt_id or (pid is None and running):
                        break
                else:
                    running = True
                    current = str(data["node"])
                    ran.append(current)
                    progress.executing(data["node"])
            elif mtype == "progress":
                if pid is None and not running:
                    continue
                progress.progress(data.get("node"), int(data.get("value", 0)), int(data.get("max", 0)))
                steps.append((str(data.get("node") or current), int(data.get("value", 0)), int(data.get("max", 0))))
            elif mtype == "executed":
                executed[str(data.get("node"))] = data.get("output")
            elif mtype == "execution_success":
                break
            elif mtype == "execution_error":
                progress.done()
                raise ExecutionFailed(format_execution_error(data), data)
            elif mtype == "execution_interrupted":
                progress.done()
                raise ExecutionInterrupted(
                    f"execution interrupted in node {data.get('node_id', '?')} ({data.get('node_type', '?')})"
                )
        progress.done()
    except (RunTimeout, KeyboardInterrupt):
        progress.done()
        if prompt_id is not None:
            _interrupt(http, prompt_id, running)
        raise
    finally:
        with contextlib.suppress(Exception):
            ws.close()

    # the history entry is written when the run ends; newer servers may announce success first
    entry = None
    history_deadline = time.monotonic() + 30.0
    while True:
        hist = _get_json(f"{http}/history/{prompt_id}", timeout=remaining())
        entry = hist.get(prompt_id) if isinstance(hist, dict) else None
        if entry is not None or time.monotonic() > history_deadline:
            break
        time.sleep(0.2)
    if entry is None and log:
        log(f"warning: no history for prompt {prompt_id}; using the outputs seen on the websocket")
    outputs = (entry or {}).get("outputs") or executed
    status_info = (entry or {}).get("status") or {}
    if status_info.get("status_str") == "error":
        raise ExecutionFailed(f"prompt {prompt_id} ended with status 'error': {status_info.get('messages')}")
    files = _output_files(outputs)
    texts = _output_texts(outputs)
    downloaded = download_outputs(server, files, out_dir, timeout=remaining(120.0)) if out_dir else []
    return {"prompt_id": prompt_id, "node_errors": node_errors, "outputs": outputs, "executed": executed, "files": files,
            "texts": texts, "downloaded": downloaded, "elapsed_s": time.monotonic() - t0,
            "cached": cached, "ran": ran, "progress": steps, "previews": previews}


