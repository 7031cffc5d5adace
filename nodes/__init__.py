"""ComfyUI adapters. The five LongTake nodes land here (issue: node pack); none are registered yet."""
NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
