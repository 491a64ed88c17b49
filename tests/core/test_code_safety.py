"""No unsafe loading and no eval/exec anywhere in the pack's code (nodes/, stem_core/, scripts/, bench/, __init__.py).

- torch.load must pass weights_only=True (a pickle in a .pt file can run code on the server);
- no pickle / marshal / dill loading, no yaml.load without SafeLoader, no numpy.load(allow_pickle=True);
- no eval(), exec() or compile() of strings, no __import__ of computed names.
Checked on the syntax tree, so `module.eval()` (torch's train/eval switch) is fine.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ["nodes", "stem_core", "scripts", "bench", "__init__.py"]
BANNED_CALLS = {"eval", "exec", "compile", "__import__"}
PICKLE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def python_files():
    for entry in SCANNED:
        p = REPO / entry
        if p.is_file():
            yield p
        elif p.is_dir():
            yield from sorted(q for q in p.rglob("*.py") if "__pycache__" not in q.parts)


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _kw(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node):
    return isinstance(node, ast.Constant) and node.value is True


def problems(source: str, filename: str = "<src>"):
    tree = ast.parse(source, filename)
    aliases = {}  # local name -> dotted origin, from imports
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append((node.lineno, f"import from {node.module}"))
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PICKLE_MODULES:
                    found.append((node.lineno, f"import {a.name}"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        head, _, rest = name.partition(".")
        full = f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(head, head)
        if isinstance(node.func, ast.Name) and node.func.id in BANNED_CALLS:
            found.append((node.lineno, f"{node.func.id}()"))
        elif full in ("builtins.eval", "builtins.exec", "builtins.compile", "importlib.__import__"):
            found.append((node.lineno, f"{full}()"))
        elif full == "torch.load" and not _is_true(_kw(node, "weights_only")):
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif full in ("yaml.load", "yaml.load_all") and "Safe" not in (_dotted(_kw(node, "Loader")) or ""):
            found.append((node.lineno, f"{full} without SafeLoader"))
        elif full in ("yaml.unsafe_load", "yaml.full_load"):
            found.append((node.lineno, full))
        elif full in ("numpy.load", "np.load") and _is_true(_kw(node, "allow_pickle")):
            found.append((node.lineno, "numpy.load(allow_pickle=True)"))
        elif full.split(".")[0] in PICKLE_MODULES and full.rsplit(".", 1)[-1] in ("load", "loads", "Unpickler"):
            found.append((node.lineno, full))
    return found


def test_pack_has_no_unsafe_loading_or_eval():
    files = list(python_files())
    assert len(files) > 10
    bad = []
    for f in files:
        for line, what in problems(f.read_text(encoding="utf-8"), str(f)):
            bad.append(f"{f.relative_to(REPO)}:{line}: {what}")
    assert not bad, "unsafe code in the pack (use torch.load(..., weights_only=True); no eval/exec):\n" + \
        "\n".join(bad)


@pytest.mark.parametrize("snippet,expect", [
    ("import torch\ntorch.load('x.pt')", "weights_only"),
    ("import torch\ntorch.load('x.pt', weights_only=False)", "weights_only"),
    ("from torch import load\nload('x.pt', map_location='cpu')", "weights_only"),
    ("import torch as T\nT.load(f)", "weights_only"),
    ("eval(user_text)", "eval()"),
    ("exec(code)", "exec()"),
    ("import pickle\npickle.loads(b)", "pickle"),
    ("import yaml\nyaml.load(s)", "SafeLoader"),
    ("import numpy as np\nnp.load(f, allow_pickle=True)", "allow_pickle"),
])
def test_checker_catches(snippet, expect):
    assert any(expect in what for _, what in problems(snippet)), snippet


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load('x.pt', weights_only=True, map_location='cpu')",
    "model.eval()",
    "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)\nyaml.safe_load(s)",
    "import numpy as np\nnp.load(f)",
])
def test_checker_allows(snippet):
    assert problems(snippet) == []
