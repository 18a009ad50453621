"""Shoal: fair, fast and safe sharing of GPU clusters between teams."""

__version__ = "0.1.0"
