"""Collects the node classes of every feature module; display names come from each class's TITLE."""
import importlib
import logging

_FEATURE_MODULES = ["video_load", "stem_patch", "stem_invert", "metrics_node", "save_video", "tiny_model",
                    "tokenflow_edit", "fatezero_edit"]

NODE_CLASS_MAPPINGS = {}
for _name in _FEATURE_MODULES:
    try:
        _module = importlib.import_module(f".{_name}", __package__)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith(_name):
            continue  # feature not present in this checkout
        raise
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)

NODE_DISPLAY_NAME_MAPPINGS = {key: getattr(cls, "TITLE", key) for key, cls in NODE_CLASS_MAPPINGS.items()}
logging.info("[STEM] registered %d nodes", len(NODE_CLASS_MAPPINGS))
