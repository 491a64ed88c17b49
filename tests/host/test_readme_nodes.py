"""The README's node reference matches the registered nodes: one row per node id with its display name, and every
widget input of the node's INPUT_TYPES named in its row (so a renamed or added input shows up as a failure)."""
import re

from tests.conftest import REPO

from workflow_format import input_specs  # noqa: E402


def _rows():
    text = (REPO / "README.md").read_text()
    section = text.split("## Node reference", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `(STEM\w+)` \((.*?)\) \|(.*)", line)
        if m:
            assert m.group(1) not in rows, f"the README's node table lists {m.group(1)} twice"
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_node_table_lists_every_registered_node(comfy_host):
    pack = {k: v for k, v in comfy_host["nodes"].NODE_CLASS_MAPPINGS.items() if k.startswith("STEM")}
    display = comfy_host["nodes"].NODE_DISPLAY_NAME_MAPPINGS
    rows = _rows()
    assert sorted(rows) == sorted(pack), (f"README node table: missing {sorted(set(pack) - set(rows))}, "
                                          f"not registered {sorted(set(rows) - set(pack))}")
    for node_id, (name, cells) in rows.items():
        assert name == display.get(node_id, node_id), f"{node_id}: README says '{name}', the node '{display[node_id]}'"
        widgets = [s[0] for s in input_specs(pack[node_id].INPUT_TYPES()) if s[3]]
        missing = [w for w in widgets if f"`{w}`" not in cells]
        assert not missing, f"{node_id}: the README's row does not name its inputs {missing}"
