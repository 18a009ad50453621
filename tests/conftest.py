"""Shared fixtures: the real traces beside the checkout, skipped cleanly when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces"


@pytest.fixture(scope="session")
def openb_dir() -> Path:
    folder = SHARED / "alibaba-openb-2023"
    if not (folder / "openb_pod_list_default.csv").is_file():
        pytest.skip(f"openb trace not found at {folder} (../shared is absent)")
    return folder


@pytest.fixture(scope="session")
def azure_trace() -> Path:
    path = SHARED / "azure-llm-code" / "AzureLLMInferenceTrace_code.csv"
    if not path.is_file():
        pytest.skip(f"Azure LLM trace not found at {path} (../shared is absent)")
    return path
