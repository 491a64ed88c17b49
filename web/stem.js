// ComfyUI-STEM in the editor. Loaded by both frontends this pack supports: the pinned 2024-03 litegraph
// frontend (web/scripts/*.js of ComfyUI a28a9dc8) and current ones (comfyui-frontend-package, which keeps
// /scripts/app.js as a compatibility module). ComfyUI serves this folder because the pack's __init__.py sets
// WEB_DIRECTORY = "./web".
//
// 1. Seeds stay put: a STEM node's "control after generate" starts at "fixed" (the stock default, randomize,
//    changes the seed after every queue, so the next queue re-runs the whole inversion). Saved workflows keep
//    what they saved: nodeCreated runs before a loaded node's widget values are applied.
// 2. Workflows saved before the edit nodes lost their `steps` widget (and FateZero its source prompt) load with
//    their values in the right widgets: widget values are stored by position.
// 3. STEM Save Video's mp4 plays on the node. Current frontends do that themselves for an mp4 in `images` with
//    `animated`; the pinned one has no <video>, so this adds one there.
// 4. STEM Video Metrics shows its report as text on the node (the curve is an image the frontends draw).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const CONTROL_WIDGETS = ["control_after_generate", "control_before_generate"];
// Current frontends define window.comfyAPI and show videos natively; the pinned one does not.
const NATIVE_VIDEO = () => typeof window.comfyAPI !== "undefined";

// widgets_values of older versions -> today's order (see the Python INPUT_TYPES)
const MIGRATIONS = {
  // [steps, cfg, pnp_f_t, pnp_attn_t, chunk_size, seed, control, blend] -> without steps
  STEMTokenFlowEdit: { oldLength: 8, migrate: (v) => v.slice(1) },
  // [source_prompt, target_prompt, blend_words, blend_threshold, cross, self, reweight, cfg, steps, latent_blend,
  //  release_store] -> [target_prompt, blend_words, ..., cfg, negative_prompt "", latent_blend, release_store]
  STEMFateZeroEdit: { oldLength: 11, migrate: (v) => [...v.slice(1, 8), "", ...v.slice(9)] },
};

function viewUrl(entry) {
  const params = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder ?? "",
                                       type: entry.type ?? "output" });
  return api.apiURL(`/view?${params}&stem=${Date.now()}`);
}

function noSerialize(widget) {
  // never part of the API prompt (it would change the cache key) nor of the saved widget values' meaning
  widget.options = widget.options ?? {};
  widget.options.serialize = false;
  widget.serializeValue = () => undefined;
  return widget;
}

function showVideo(node, entry) {
  let widget = node.widgets?.find((w) => w.name === "stem_video_preview");
  if (!widget) {
    const video = document.createElement("video");
    Object.assign(video, { controls: true, loop: true, muted: true, autoplay: true, playsInline: true });
    video.classList.add("stem-video-preview");
    Object.assign(video.style, { width: "100%", height: "100%", objectFit: "contain", background: "#000" });
    let aspect = 1;
    widget = noSerialize(node.addDOMWidget("stem_video_preview", "video", video, {
      hideOnZoom: false,
      getValue: () => undefined,
      setValue: () => {},
      getHeight: () => Math.max(64, (node.size[0] - 20) * aspect + 20),
      getMinHeight: () => 64,
    }));
    video.addEventListener("loadedmetadata", () => {
      if (video.videoWidth) aspect = video.videoHeight / video.videoWidth;
      node.setSize([node.size[0], node.computeSize([node.size[0], node.size[1]])[1]]);
      node.setDirtyCanvas?.(true, true);
      video.play().catch(() => {});
    });
  }
  widget.element.src = viewUrl(entry);
}

function showReport(node, text) {
  let widget = node.widgets?.find((w) => w.name === "stem_report");
  if (!widget) {
    widget = noSerialize(ComfyWidgets.STRING(node, "stem_report", ["STRING", { multiline: true }], app).widget);
    const el = widget.inputEl ?? widget.element;
    if (el) {
      el.readOnly = true;
      el.style.fontFamily = "monospace";
      el.style.fontSize = "10px";
      el.style.opacity = "0.9";
    }
  }
  widget.value = text;
  const el = widget.inputEl ?? widget.element;
  if (el && "value" in el) el.value = text;
  node.setDirtyCanvas?.(true, true);
}

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
    const migration = MIGRATIONS[nodeData.name];
    if (migration) {
      const configure = nodeType.prototype.configure;
      nodeType.prototype.configure = function (info) {
        if (Array.isArray(info?.widgets_values) && info.widgets_values.length === migration.oldLength) {
          info.widgets_values = migration.migrate(info.widgets_values);
          console.info(`[STEM] ${nodeData.name} #${info.id}: widget values of an older version moved into place`);
        }
        return configure.apply(this, arguments);
      };
    }

    if (nodeData.name === "STEMSaveVideo") {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const video = message?.stem_video?.[0];
        if (video && video.format === "mp4" && !NATIVE_VIDEO()) showVideo(this, video);
      };
    }

    if (nodeData.name === "STEMVideoMetrics") {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const text = message?.text;
        if (text?.length) showReport(this, Array.isArray(text) ? text.join("\n\n") : String(text));
      };
    }
  },
});
