"""Simulated runtime: virtual nodes and a virtual clock."""
