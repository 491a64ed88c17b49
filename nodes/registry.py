"""Collects the node classes of every feature module; display names come from each class's TITLE."""
import importlib
import logging

_FEATURE_MODULES = ["video", "inversion", "tokenflow", "fatezero", "metrics", "compare", "videoshop", "testing"]

NODE_CLASS_MAPPINGS = {}
for _name in _FEATURE_MODULES:
    NODE_CLASS_MAPPINGS.update(importlib.import_module(f".{_name}", __package__).NODE_CLASS_MAPPINGS)

NODE_DISPLAY_NAME_MAPPINGS = {key: getattr(cls, "TITLE", key) for key, cls in NODE_CLASS_MAPPINGS.items()}
logging.info("[STEM] registered %d nodes", len(NODE_CLASS_MAPPINGS))
