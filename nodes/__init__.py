"""ComfyUI adapters: the five LongTake nodes (see nodes.py) and the bridge to ComfyUI (comfy.py)."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
