"""LongTake: minute-long text-to-video for ComfyUI, and the plain Python library under it.

ComfyUI imports this file from `custom_nodes/<folder>/`; pip installs it as the package `longtake`.
It stays light: no torch, no model, no file read until a node or command runs.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
