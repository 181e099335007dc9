"""Errors minibert raises on purpose. Each message names the file, field, tensor or index at fault."""

import json
import math
from pathlib import Path


class MinibertError(Exception):
    """Base class: anything minibert rejects about a model or its files."""


class CheckpointError(MinibertError, ValueError):
    """A model directory or weights file is missing, unreadable, corrupt or mis-shaped."""


class UnsupportedModelError(MinibertError, ValueError):
    """The checkpoint is readable but describes something minibert does not implement."""


# A model's JSON files (configs, pooling, modules) are small; a larger one is not what it claims.
MAX_JSON_BYTES = 16 * 1024 * 1024


def _no_duplicates(where):  # an object_pairs_hook that refuses a key given twice
    def hook(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise CheckpointError(f"{where}: the key {key!r} appears twice")
            out[key] = value
        return out

    return hook


def parse_json(text, where, reject_duplicates=False):  # str, "file (part)" -> parsed JSON, or a CheckpointError
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(where) if reject_duplicates else None)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer of thousands of digits
        raise CheckpointError(f"{where}: not valid JSON ({e})") from None


def read_json(path, required=True, what="a JSON object"):  # Path -> parsed JSON, None when optional and absent
    """Read a checkpoint's JSON file; every problem becomes a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: not found")
        return None
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes is too large for a model's JSON file")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot be read as UTF-8 text ({e})") from None
    data = parse_json(text, str(path))
    if what == "a JSON object" and not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected {what}, got {type(data).__name__}")
    return data


def integer(value, where, low=None, high=None):  # a JSON field that must be a whole number -> int
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{where} must be an integer, got {value!r}"[:300])
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise CheckpointError(f"{where} must be {bounds}, got {value}"[:300])
    return value


def number(value, where, low=None, high=None):  # a JSON field that must be a finite number -> float
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{where} must be a finite number, got {value!r}"[:300])
    if (low is not None and value <= low) or (high is not None and value >= high):
        raise CheckpointError(f"{where} must lie between {low} and {high}, got {value!r}")
    return float(value)


def boolean(value, where):  # a JSON field that must be true or false -> bool
    if not isinstance(value, bool):
        raise CheckpointError(f"{where} must be true or false, got {value!r}"[:300])
    return value


def text(value, where):  # a JSON field that must be a string -> str
    if not isinstance(value, str):
        raise CheckpointError(f"{where} must be a string, got {value!r}"[:300])
    return value
