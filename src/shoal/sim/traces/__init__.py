"""Trace loaders: turn files into nodes and workloads for the simulator."""
