"""minibert: BERT and DistilBERT sentence encoders in NumPy and Numba.

    import minibert
    model = minibert.load("sentence-transformers/all-MiniLM-L6-v2")
    emb = model.encode(["A sentence.", "Another one."])   # [2, 384]
    model.similarity(emb, emb)                             # the model's own score
"""

from . import util
from .errors import CheckpointError, MinibertError, UnsupportedModelError
from .model import SentenceEncoder, load

__version__ = "0.1.0"
__all__ = ["load", "SentenceEncoder", "util", "MinibertError", "CheckpointError", "UnsupportedModelError"]
