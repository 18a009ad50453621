"""Specs and resource arithmetic: pydantic models and pure values, no I/O."""
