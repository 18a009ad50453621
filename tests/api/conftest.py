"""The embedded control plane's fixtures, shared with tests/control."""

from __future__ import annotations

from tests.control.conftest import admin, plane

__all__ = ["admin", "plane"]
