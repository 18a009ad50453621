"""Simulation: trace loaders, the fill and replay engines, and reports."""
