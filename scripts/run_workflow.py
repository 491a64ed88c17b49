#!/usr/bin/env python3
"""Queue an API-format ComfyUI workflow, follow its progress and collect its outputs.

Needs only the standard library and ``websocket-client`` (``pip install websocket-client``).

Against a running ComfyUI::

    python scripts/run_workflow.py workflows/api/stem_tokenflow.json --server 127.0.0.1:8188 \\
        --video clip.mp4 --target-prompt "a watercolor painting of a fox" --out results/

Or let the script start ComfyUI for the run and stop it afterwards::

    python scripts/run_workflow.py WORKFLOW.json --start ~/ComfyUI --cpu --port 0 --out results/

Overrides (applied in this order, on a copy of the workflow):

``--checkpoint NAME``
    sets ``ckpt_name`` on every CheckpointLoaderSimple node. A node of the pack's tiny test model
    (class ``STEMTinyTestModel``) is replaced, under the same node id, by a CheckpointLoaderSimple
    loading NAME: both output MODEL at slot 0, CLIP at 1 and VAE at 2, so every link into it stays
    valid (a link to any other slot is refused).
``--video NAME``
    sets the ``video`` input of every STEMVideoLoad node (a file or folder in ComfyUI's input dir).
``--source-prompt TEXT`` / ``--target-prompt TEXT``
    sets ``text`` on the CLIPTextEncode nodes whose title (``_meta.title``) or node id contains
    "source prompt" / "target prompt" (case-insensitive; "_" and "-" count as spaces).
``--set NODE_ID.INPUT=VALUE``
    any input of any node; VALUE is parsed as JSON when it can be (numbers, true/false, lists such
    as a link ``["4", 0]``), else taken as a string. Repeatable; applied last.

Exit status: 0 on success, 1 when ComfyUI rejects the prompt, the run fails, is interrupted or
times out, 2 for bad arguments or an unreadable workflow.

The pieces are importable: ``load_workflow``, ``apply_overrides``, ``start_server`` (a context
manager), ``queue_and_wait`` and the ``format_*`` helpers.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

VIDEO_LOADER_CLASSES = ("STEMVideoLoad",)
PROMPT_CLASSES = ("CLIPTextEncode",)
CHECKPOINT_CLASS = "CheckpointLoaderSimple"
TINY_MODEL_CLASS = "STEMTinyTestModel"
TINY_MODEL_SLOTS = {0: "MODEL", 1: "CLIP", 2: "VAE"}  # same order as CheckpointLoaderSimple


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


def _title(node: dict) -> str:
    meta = node.get("_meta")
    return str(meta.get("title", "")) if isinstance(meta, dict) else ""


def _normalise(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", s.lower())).strip()


def _marked(node_id: str, node: dict, mark: str) -> bool:
    return mark in _normalise(_title(node)) or mark in _normalise(str(node_id))


def _describe_node(node_id: str, node: dict) -> str:
    title = _title(node)
    cls = node.get("class_type", "?")
    return f"{node_id} ({cls}{', ' + repr(title) if title and title != cls else ''})"


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


def apply_overrides(workflow: Dict[str, dict], video: Optional[str] = None,
                    source_prompt: Optional[str] = None, target_prompt: Optional[str] = None,
                    checkpoint: Optional[str] = None, sets: Iterable[str] = (),
                    changes: Optional[List[str]] = None) -> Dict[str, dict]:
    """Return a modified deep copy of an API-format workflow (the input is left untouched).

    See the module docstring for what each override does. Raises WorkflowError when an override
    has nothing to act on (so a typo never silently runs the unmodified workflow). Descriptions
    of the changes are appended to ``changes`` when a list is given.
    """
    check_api_format(workflow)
    wf = copy.deepcopy(workflow)
    log = changes.append if changes is not None else (lambda s: None)

    if checkpoint is not None:
        hit = False
        for nid, node in list(wf.items()):
            if node["class_type"] == CHECKPOINT_CLASS:
                node.setdefault("inputs", {})["ckpt_name"] = checkpoint
                log(f"node {nid}: ckpt_name = {checkpoint!r}")
                hit = True
            elif node["class_type"] == TINY_MODEL_CLASS:
                bad = [(d, name, slot) for d, name, slot in _links_to(wf, nid) if slot not in TINY_MODEL_SLOTS]
                if bad:
                    d, name, slot = bad[0]
                    raise WorkflowError(
                        f"--checkpoint: node {d} input {name!r} uses output slot {slot} of {TINY_MODEL_CLASS} "
                        f"node {nid}, which a {CHECKPOINT_CLASS} does not have (only MODEL=0, CLIP=1, VAE=2)"
                    )
                meta = dict(node.get("_meta") or {})
                meta["title"] = f"Load Checkpoint (replaces {TINY_MODEL_CLASS})"
                wf[nid] = {"class_type": CHECKPOINT_CLASS, "inputs": {"ckpt_name": checkpoint}, "_meta": meta}
                log(f"node {nid}: {TINY_MODEL_CLASS} replaced by {CHECKPOINT_CLASS}({checkpoint!r})")
                hit = True
        if not hit:
            raise WorkflowError(f"--checkpoint: the workflow has no {CHECKPOINT_CLASS} or {TINY_MODEL_CLASS} node")

    if video is not None:
        hits = [nid for nid, n in wf.items() if n["class_type"] in VIDEO_LOADER_CLASSES]
        if not hits:
            raise WorkflowError(f"--video: the workflow has no {' / '.join(VIDEO_LOADER_CLASSES)} node")
        for nid in hits:
            wf[nid].setdefault("inputs", {})["video"] = video
            log(f"node {nid}: video = {video!r}")

    for which, text in (("source", source_prompt), ("target", target_prompt)):
        if text is None:
            continue
        mark = f"{which} prompt"
        encoders = [(nid, n) for nid, n in wf.items() if n["class_type"] in PROMPT_CLASSES]
        hits = [nid for nid, n in encoders if _marked(nid, n, mark)]
        if not hits:
            known = ", ".join(_describe_node(nid, n) for nid, n in encoders) or "none"
            raise WorkflowError(
                f"--{which}-prompt: no {'/'.join(PROMPT_CLASSES)} node is marked as the {mark}; give one a "
                f"title containing '{mark}' (right-click > Title in the editor). Text encoders found: {known}"
            )
        for nid in hits:
            wf[nid].setdefault("inputs", {})["text"] = text
            log(f"node {nid}: text = {text!r}")

    for spec in sets:
        nid, name, value = parse_set(spec)
        if nid not in wf:
            raise WorkflowError(f"--set {spec!r}: no node {nid!r}; node ids are {', '.join(sorted(wf, key=_id_key))}")
        wf[nid].setdefault("inputs", {})[name] = value
        log(f"node {nid}: {name} = {value!r}")
    return wf


def _id_key(s: str):
    return (0, int(s), "") if str(s).isdigit() else (1, 0, str(s))


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
        for nid in sorted(node_errors, key=_id_key):
            entry = node_errors[nid] or {}
            cls = entry.get("class_type") or (workflow or {}).get(nid, {}).get("class_type", "?")
            title = _title((workflow or {}).get(nid, {}))
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


def _http(method: str, url: str, body: Any = None, timeout: float = 30.0) -> Tuple[int, bytes]:
    data = None
    headers = {}
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


def check_node_types(server: Any, workflow: dict, timeout: float = 30.0) -> None:
    """Fail early, and clearly, on class types the server does not know (an old ComfyUI answers
    such a prompt with a bare HTTP 500)."""
    http, _ = _base(server)
    known = _get_json(f"{http}/object_info", timeout=timeout)
    missing = sorted({n["class_type"] for n in workflow.values()} - set(known))
    if missing:
        where = [f"{nid} ({n['class_type']})" for nid, n in sorted(workflow.items(), key=lambda kv: _id_key(kv[0]))
                 if n["class_type"] in missing]
        stem = any(m.startswith("STEM") for m in missing)
        hint = (" Is the STEM pack installed in ComfyUI's custom_nodes/ folder, and did it load "
                "(see the server log)?" if stem else " Install the custom nodes that provide them.")
        raise PromptRejected(
            f"the server does not know node type(s) {', '.join(missing)} used by node(s) {', '.join(where)}.{hint}"
        )


def _interrupt(http: str, prompt_id: str, running: bool) -> None:
    """Best effort: take our prompt off the queue, or interrupt it if it is running."""
    with contextlib.suppress(Exception):
        if running:
            _http("POST", f"{http}/interrupt", {"prompt_id": prompt_id}, timeout=5)
        else:
            _http("POST", f"{http}/queue", {"delete": [prompt_id]}, timeout=5)


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
        title = _title(node)
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
    pairs of `text` UI outputs), "downloaded" (local paths), "elapsed_s"}.
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
        check_node_types(server, workflow, timeout=remaining())

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
                continue  # binary preview images
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
                if nodes:
                    progress.line(f"cached: {len(nodes)} node(s) reused from an earlier run")
            elif mtype == "executing":
                if data.get("node") is None:
                    if pid == prompt_id or (pid is None and running):
                        break
                else:
                    running = True
                    progress.executing(data["node"])
            elif mtype == "progress":
                if pid is None and not running:
                    continue
                progress.progress(data.get("node"), int(data.get("value", 0)), int(data.get("max", 0)))
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
            "texts": texts, "downloaded": downloaded, "elapsed_s": time.monotonic() - t0}


# ---------------------------------------------------------------------------------------------
# starting a server


def stop_process(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """Terminate a child process, killing it if it does not exit within `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (tiny race window before ComfyUI binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerHandle:
    """A ComfyUI started by ``start_server``: ``address`` ("127.0.0.1:PORT"), ``process``, ``log_path``."""

    def __init__(self, address: str, process: subprocess.Popen, log_path: str):
        self.address = address
        self.process = process
        self.log_path = log_path

    def __str__(self) -> str:
        return self.address

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def start_server(comfyui_dir: str, python: Optional[str] = None, port: int = 0, cpu: bool = False,
                 extra_args: Sequence[str] = (), timeout: float = 300.0, log_path: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = print):
    """Run ``main.py --listen 127.0.0.1 --port P --disable-auto-launch [--cpu] [extra_args]`` from
    ``comfyui_dir``, wait until it answers GET /system_stats, yield a ServerHandle, stop it on exit.

    port 0 picks a free port. The server's output goes to ``log_path`` (default: a temporary file,
    removed after a clean run, kept and named in error messages otherwise). Raises WorkflowError if it exits or does not answer in
    ``timeout`` seconds."""
    main_py = os.path.join(comfyui_dir, "main.py")
    if not os.path.isfile(main_py):
        raise WorkflowError(f"--start: {main_py} not found; point it at a ComfyUI folder")
    port = int(port) or free_port()
    address = f"127.0.0.1:{port}"
    cmd = [python or sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch"]
    if cpu:
        cmd.append("--cpu")
    cmd.extend(extra_args)
    own_log = log_path is None
    if own_log:
        fd, log_path = tempfile.mkstemp(prefix="comfyui-", suffix=".log")
        os.close(fd)
    if log:
        log(f"starting ComfyUI: {' '.join(shlex.quote(c) for c in cmd)} (in {comfyui_dir}; log {log_path})")
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=comfyui_dir, stdout=log_file, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    handle = ServerHandle(address, proc, log_path)
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise WorkflowError(f"ComfyUI exited with status {proc.returncode} while starting; "
                                    f"last lines of {log_path}:\n{handle.log_tail()}")
            with contextlib.suppress(ServerUnreachable):
                status, _ = _http("GET", f"http://{address}/system_stats", timeout=2)
                if status == 200:
                    break
            if time.monotonic() - t0 > timeout:
                raise WorkflowError(f"ComfyUI did not answer on {address} within {timeout:g} s; "
                                    f"last lines of {log_path}:\n{handle.log_tail()}")
            time.sleep(0.5)
        if log:
            log(f"ComfyUI is up on {address} after {time.monotonic() - t0:.1f} s")
        yield handle
    except BaseException:
        own_log = False  # keep the log of a failed run for the user to read
        raise
    finally:
        stop_process(proc)
        log_file.close()
        if own_log:
            with contextlib.suppress(OSError):
                os.remove(log_path)


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="Queue an API-format ComfyUI workflow and collect its outputs.",
        epilog="Overrides: see the module docstring (python -c 'import run_workflow; help(run_workflow)').")
    ap.add_argument("workflow", help="API-format workflow JSON")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--server", default=None, help="running ComfyUI, HOST:PORT (default 127.0.0.1:8188)")
    where.add_argument("--start", metavar="COMFYUI_DIR", help="start ComfyUI from this folder for the run")
    ap.add_argument("--python", help="interpreter for --start (default: this one)")
    ap.add_argument("--port", type=int, default=0, help="port for --start; 0 picks a free one (default)")
    ap.add_argument("--cpu", action="store_true", help="pass --cpu to the started ComfyUI")
    ap.add_argument("--extra-args", default="", help="more arguments for the started main.py (one string)")
    ap.add_argument("--server-log", help="file for the started server's output (default: a temp file)")
    ap.add_argument("--video", help="video input of STEMVideoLoad nodes")
    ap.add_argument("--source-prompt", help="text of the CLIPTextEncode titled '... source prompt ...'")
    ap.add_argument("--target-prompt", help="text of the CLIPTextEncode titled '... target prompt ...'")
    ap.add_argument("--checkpoint", help="ckpt_name for CheckpointLoaderSimple (replaces STEMTinyTestModel)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                    help="set any input (JSON value when it parses); repeatable")
    ap.add_argument("--out", help="download the output files into this folder")
    ap.add_argument("--timeout", type=float, default=None, help="overall limit in seconds (start + run)")
    ap.add_argument("--save-workflow", help="also write the workflow after overrides to this file")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    log = None if a.quiet else print
    try:
        wf = load_workflow(a.workflow)
        changes: List[str] = []
        wf = apply_overrides(wf, video=a.video, source_prompt=a.source_prompt, target_prompt=a.target_prompt,
                             checkpoint=a.checkpoint, sets=a.sets, changes=changes)
    except WorkflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for c in changes:
        if log:
            log(f"override: {c}")
    if a.save_workflow:
        with open(a.save_workflow, "w", encoding="utf-8") as f:
            json.dump(wf, f, indent=2)

    t0 = time.monotonic()
    handle = None
    try:
        with contextlib.ExitStack() as stack:
            if a.start:
                start_timeout = 300.0 if a.timeout is None else a.timeout
                handle = stack.enter_context(start_server(
                    a.start, python=a.python, port=a.port, cpu=a.cpu, extra_args=shlex.split(a.extra_args),
                    timeout=start_timeout, log_path=a.server_log, log=log))
                server = handle.address
            else:
                server = a.server or "127.0.0.1:8188"
            left = None if a.timeout is None else max(a.timeout - (time.monotonic() - t0), 1.0)
            result = queue_and_wait(server, wf, timeout=left, out_dir=a.out, log=log)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except WorkflowError as e:
        print(f"error: {e}", file=sys.stderr)
        # a crash or an unknown node type (a pack that failed to import) is explained in the log;
        # an execution error already carries its traceback
        unknown_type = isinstance(e, PromptRejected) and "does not know node type" in str(e)
        if handle is not None and (unknown_type or not isinstance(e, (PromptRejected, ExecutionFailed))):
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
