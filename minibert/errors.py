"""Errors minibert raises on purpose. Each message names the file, tensor or index at fault."""


class MinibertError(Exception):
    """Base class: anything minibert rejects about a model or its files."""


class CheckpointError(MinibertError, ValueError):
    """A model directory or weights file is missing, unreadable, corrupt or mis-shaped."""


class UnsupportedModelError(MinibertError, ValueError):
    """The checkpoint is readable but describes something minibert does not implement."""
