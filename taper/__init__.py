"""Taper: port PyTorch models to a lean engine, verify them layer by layer, and benchmark them."""
__version__ = "0.1.0"
