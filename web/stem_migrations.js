// Widget values of workflows saved by older versions of ComfyUI-STEM, moved into today's widgets.
// A UI workflow stores a node's widget values by position (litegraph LGraphNode.configure assigns
// widgets_values[i] to widgets[i]), so removing a widget would shift every later value into the wrong widget.
// Pure module (no ComfyUI import): stem.js uses it in the editor, tests/host/test_settings_stay_put.py runs it
// with node against the node classes' real widget order.

// class -> { isOld(values) -> bool, migrate(values) -> values } ; today's orders are the Python INPUT_TYPES.
export const MIGRATIONS = {
  // old: [steps, cfg, pnp_f_t, pnp_attn_t, chunk_size, seed, control_after_generate, blend]
  // now: [cfg, pnp_f_t, pnp_attn_t, chunk_size, seed, control_after_generate, blend]
  STEMTokenFlowEdit: {
    isOld: (v) => v.length === 8,
    migrate: (v) => v.slice(1),
  },
  // old: [source_prompt, target_prompt, blend_words, blend_threshold, cross_replace_steps, self_replace_steps,
  //       reweight, cfg, steps, latent_blend, release_store(, target_blend_words)]
  // now: [target_prompt, blend_words, blend_threshold, cross_replace_steps, self_replace_steps, reweight, cfg,
  //       negative_prompt, latent_blend, release_store, target_blend_words]
  // (old index 8 is the steps number; today's index 8 is the latent_blend boolean)
  STEMFateZeroEdit: {
    isOld: (v) => v.length >= 11 && typeof v[8] === "number",
    migrate: (v) => [...v.slice(1, 8), "", ...v.slice(9)],
  },
};

// values of a node of class `type` as today's widgets expect them (unchanged when already current)
export function migrateWidgetValues(type, values) {
  const migration = MIGRATIONS[type];
  if (!migration || !Array.isArray(values) || !migration.isOld(values)) return values;
  return migration.migrate(values);
}
