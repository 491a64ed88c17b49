"""The layering the project relies on, checked on the syntax tree of every file:

- stem_core/ imports no ComfyUI module (it must run and be tested without ComfyUI);
- of nodes/, only host.py imports ComfyUI internals (and testing.py, which builds the tiny test models from
  ComfyUI's model classes); no node file imports another node file (only host);
- tests, benchmarks and scripts import the pack package-qualified (comfyui_stem...), never the top-level
  `stem_core` / `nodes` packages (which would shadow ComfyUI's own nodes.py), and never edit sys.modules.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMFY_MODULES = {"comfy", "comfy_extras", "folder_paths", "nodes", "server", "execution", "latent_preview",
                 "comfy_api", "comfy_execution", "node_helpers"}


def files(folder):
    return sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imports(path: Path):
    """(line, absolute module name, level) of every import in a file (level > 0: relative)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, 0
        elif isinstance(node, ast.ImportFrom):
            if node.level and not node.module:
                for a in node.names:
                    yield node.lineno, a.name, node.level
            else:
                yield node.lineno, node.module or "", node.level


def sys_modules_edits(path: Path):
    """Lines that assign, delete or mutate entries of sys.modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))

    def is_sys_modules(node):
        return isinstance(node, ast.Attribute) and node.attr == "modules" and \
            isinstance(node.value, ast.Name) and node.value.id == "sys"
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else []
        if any(isinstance(t, ast.Subscript) and is_sys_modules(t.value) for t in targets):
            yield node.lineno
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_sys_modules(node.func.value) \
                and node.func.attr in ("pop", "setdefault", "update", "clear", "__setitem__", "__delitem__"):
            yield node.lineno


def test_stem_core_is_pure():
    bad = [f"{p.relative_to(REPO)}:{line}: import {mod}" for p in files("stem_core")
           for line, mod, level in imports(p) if level == 0 and mod.split(".")[0] in COMFY_MODULES]
    assert not bad, "stem_core must not import ComfyUI:\n" + "\n".join(bad)


def test_only_the_host_seam_knows_comfyui_and_node_files_stay_apart():
    bad = []
    for p in files("nodes"):
        for line, mod, level in imports(p):
            if level == 0 and mod.split(".")[0] in COMFY_MODULES and p.name not in ("host.py", "testing.py"):
                bad.append(f"{p.relative_to(REPO)}:{line}: imports ComfyUI module {mod} (go through nodes/host.py)")
            if level == 1 and mod.split(".")[0] not in ("host", "") and p.name != "registry.py":
                bad.append(f"{p.relative_to(REPO)}:{line}: imports node file .{mod} (only .host is shared)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder", ["tests", "bench", "scripts"])
def test_the_pack_is_imported_package_qualified(folder):
    bad = []
    for p in files(folder):
        for line, mod, level in imports(p):
            # scripts/comfy_host.py, the one host boot, imports ComfyUI's own nodes.py after putting ComfyUI first
            if level == 0 and mod.split(".")[0] in ("stem_core", "nodes") and p.name != "comfy_host.py":
                bad.append(f"{p.relative_to(REPO)}:{line}: import {mod} (use comfyui_stem.{mod})")
        if folder == "tests":
            bad += [f"{p.relative_to(REPO)}:{line}: edits sys.modules" for line in sys_modules_edits(p)]
    assert not bad, "\n".join(bad)


def test_the_checks_catch_what_they_guard(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport stem_core.em\nfrom .video import X\ndel sys.modules['nodes']\n"
                   "sys.modules['a'] = 1\nsys.modules.pop('b')\nx = sys.modules.get('c')\n")
    assert list(sys_modules_edits(bad)) == [4, 5, 6]
    found = {(mod, level) for _, mod, level in imports(bad)}
    assert ("stem_core.em", 0) in found and ("video", 1) in found
