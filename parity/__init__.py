"""The parity suite: how far minibert and Hugging Face transformers agree, layer by layer.

``python -m parity MODEL`` runs the comparison; ``parity.standins`` builds exact-architecture
stand-ins of the target models from a fixed seed (NumPy only, so the core tests can use it too).
"""
