// ComfyUI-STEM: show a node's text result (`ui.text`) on the node, read-only. Neither stock frontend draws
// `ui.text` for a custom node (the pinned 2024-03 one stores it and draws nothing; current ones only fill
// core PreviewAny's widget), so STEM Video Metrics' report would stay invisible without this.
// Served because the pack's __init__.py sets WEB_DIRECTORY = "./web"; both frontends load extension files
// from /extensions/<pack>/ and keep /scripts/app.js and /scripts/widgets.js importable.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

// node ids whose `ui.text` is shown (their Python returns {"ui": {"text": [...]}})
const TEXT_NODES = new Set(["STEMVideoMetrics"]);
const WIDGET = "stem_report";

function showText(node, text) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, WIDGET, ["STRING", { multiline: true }], app).widget;
    // never sent with the prompt (it would change the cache key and re-run the node) nor meant as a setting
    widget.options = { ...(widget.options ?? {}), serialize: false };
    const el = widget.inputEl ?? widget.element;
    if (el) {
      el.readOnly = true;
      el.classList.add("stem-report");
      Object.assign(el.style, { fontFamily: "monospace", fontSize: "10px", whiteSpace: "pre" });
    }
    node.setSize([Math.max(node.size[0], 420), Math.max(node.size[1], node.computeSize()[1] + 160)]);
  }
  widget.value = text;
  const el = widget.inputEl ?? widget.element;
  if (el && "value" in el) el.value = text;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "STEM.TextResult",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TEXT_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text?.length) showText(this, Array.isArray(text) ? text.join("\n\n") : String(text));
    };
  },
});
