"""Kubernetes runtime: an operator that drives a real cluster."""
