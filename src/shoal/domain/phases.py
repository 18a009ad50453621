"""The phases of a job's life, shared by every layer that reads or shows them.

``control.machine`` moves jobs between them; shells and the application
layer only read them.
"""

from __future__ import annotations

PHASES = ("Pending", "Running", "Preempting", "Stopping", "Succeeded", "Failed", "Cancelled")
ACTIVE_PHASES = ("Pending", "Running", "Preempting", "Stopping")
HOLDING_PHASES = ("Running", "Preempting", "Stopping")
"""Phases in which a job's pods hold their node resources (until they are seen gone)."""
FINAL_PHASES = ("Succeeded", "Failed", "Cancelled")
