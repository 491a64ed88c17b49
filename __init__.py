"""ComfyUI-STEM: STEM inversion ("A Video is Worth 256 Bases") for zero-shot video editing.

Nodes register only when ComfyUI is importable, so tools and tests can import `stem_core` alone.
"""
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
# web/: seeds fixed by default on new STEM nodes, widget values of older workflows moved into place,
# and the metrics report as text on the node (the stock frontends draw no `ui.text` of custom nodes)
WEB_DIRECTORY = "./web"

try:
    import comfy.utils  # noqa: F401  (only present inside a ComfyUI host)
except ImportError:
    pass
else:
    from .nodes.registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
