"""Errors minibert raises on purpose. Each message names the file, tensor or index at fault."""

import json
from pathlib import Path


class MinibertError(Exception):
    """Base class: anything minibert rejects about a model or its files."""


class CheckpointError(MinibertError, ValueError):
    """A model directory or weights file is missing, unreadable, corrupt or mis-shaped."""


class UnsupportedModelError(MinibertError, ValueError):
    """The checkpoint is readable but describes something minibert does not implement."""


def read_json(path, required=True, what="a JSON object"):  # Path -> parsed JSON, None when optional and absent
    """Read a checkpoint's JSON file; every problem becomes a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: not found")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if what == "a JSON object" and not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected {what}, got {type(data).__name__}")
    return data
