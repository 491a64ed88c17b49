// ComfyUI-STEM in the editor, for both frontends this pack supports: the pinned 2024-03 litegraph frontend
// (web/scripts/*.js of ComfyUI a28a9dc8) and current ones (comfyui-frontend-package, which still serves
// /scripts/app.js as a compatibility module). ComfyUI serves this folder because __init__.py sets
// WEB_DIRECTORY = "./web".
//
// 1. Seeds stay put: a new STEM node's "control after generate" starts at "fixed". The stock default,
//    randomize, changes the seed after every queue, so the next queue would re-run the whole inversion.
//    nodeCreated runs before a loaded node's saved widget values are applied, so saved workflows keep theirs.
// 2. Workflows saved before the edit nodes lost their `steps` widget (and FateZero its source prompt) load
//    with their values in the right widgets (stem_migrations.js).
import { app } from "../../scripts/app.js";
import { migrateWidgetValues } from "./stem_migrations.js";

const CONTROL_WIDGETS = ["control_after_generate", "control_before_generate"];

app.registerExtension({
  name: "STEM.VideoEditing",

  nodeCreated(node) {
    const cls = node.comfyClass ?? node.type ?? "";
    if (!cls.startsWith("STEM")) return;
    for (const w of node.widgets ?? []) {
      if (CONTROL_WIDGETS.includes(w.name)) w.value = "fixed";
    }
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("STEM")) return;
    // the pinned frontend copies LGraphNode's methods into a node class only when it registers it (after this
    // hook), so configure may not exist yet: fall back to LGraphNode's at call time
    const configure = nodeType.prototype.configure;
    nodeType.prototype.configure = function (info) {
      const original = configure ?? (globalThis.LGraphNode ?? globalThis.LiteGraph?.LGraphNode).prototype.configure;
      const values = info?.widgets_values;
      const migrated = migrateWidgetValues(nodeData.name, values);
      if (migrated !== values) {
        info.widgets_values = migrated;
        console.info(`[STEM] ${nodeData.name} #${info.id}: widget values of an older version moved into place`);
      }
      return original.apply(this, arguments);
    };
  },
});
