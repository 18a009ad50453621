"""Embedded runtime: pods as real local processes."""
