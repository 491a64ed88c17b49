"""ComfyUI glue of the STEM pack: one module per feature. The only place that imports comfy."""
