"""The parity suite: how far minibert and Hugging Face transformers agree, layer by layer.

Installed as ``minibert.parity`` (with the ``parity`` extra: torch, transformers,
sentence-transformers). ``python -m minibert.parity MODEL`` runs the comparison;
``python -m minibert.parity.sts MODEL DATA`` the STS Benchmark; ``minibert.parity.standins``
builds exact-architecture stand-ins of the target models from a fixed seed (NumPy only, so the core
tests use it too).
"""
