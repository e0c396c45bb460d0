"""Inheritune: small LMs that inherit the first layers of a trained larger model (arXiv 2404.08634)."""
__version__ = "0.1.0"
