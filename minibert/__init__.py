"""minibert: BERT and DistilBERT sentence encoders in NumPy and Numba.

import minibert
model = minibert.load("sentence-transformers/all-MiniLM-L6-v2")
emb = model.encode(["A sentence.", "Another one."])   # [2, 384]
model.similarity(emb, emb)                             # the model's own score
"""


def _map_checkout_folders():
    """In a source checkout, ``kernels/`` and ``parity/`` sit beside this folder (the project's
    layout); installed, they are ``minibert/kernels`` and ``minibert/parity`` (pyproject.toml maps
    them). Python run in the repository root finds this folder first, installed or not, so map the
    two here as well: ``minibert.kernels`` and ``minibert.parity`` then import the same either way."""
    import importlib.abc
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    folders = {
        f"{__name__}.{name}": here.parent / name
        for name in ("kernels", "parity")
        if not (here / name).is_dir() and (here.parent / name / "__init__.py").is_file()
    }
    if not folders or not (here.parent / "pyproject.toml").is_file():
        return

    class CheckoutFolders(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            folder = folders.get(fullname)
            if folder is None:
                return None
            return importlib.util.spec_from_file_location(
                fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
            )

    sys.meta_path.append(CheckoutFolders())


_map_checkout_folders()

from . import util  # noqa: E402
from .compat import SentenceTransformer  # noqa: E402
from .errors import CheckpointError, MinibertError, UnsupportedModelError  # noqa: E402
from .model import SentenceEncoder, load  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "load",
    "SentenceEncoder",
    "SentenceTransformer",
    "util",
    "MinibertError",
    "CheckpointError",
    "UnsupportedModelError",
]
