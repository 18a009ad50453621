"""The README's main job: ``shoal run examples/quickstart.yaml``, end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the quickstart trains with PyTorch: pip install torch==2.13.0")
pytest.importorskip("sklearn", reason="the quickstart uses scikit-learn: pip install scikit-learn")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_reclaims_preempts_and_resumes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shoal", "run", "examples/quickstart.yaml", "-o", "json",
         "--state-dir", str(tmp_path / "state")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    jobs = {job["name"]: job for job in report["jobs"]}
    a, b = jobs["a-ddp-digits"], jobs["b-sklearn-digits"]
    assert a["phase"] == b["phase"] == "Succeeded"
    assert (a["attempts"], a["preemptions"]) == (2, 1) and a["lost_seconds"] < 30
    assert (b["attempts"], b["preemptions"]) == (1, 0)
    decided = [(e["event"], e["job"]) for e in report["events"]
               if e["event"] in ("admitted", "preempted", "submitted")]
    assert decided == [("submitted", "a-ddp-digits"), ("admitted", "a-ddp-digits"),
                       ("submitted", "b-sklearn-digits"), ("preempted", "a-ddp-digits"),
                       ("admitted", "b-sklearn-digits"), ("admitted", "a-ddp-digits")]
    # team-b arrives once team-a has saved a checkpoint (an event, not a timer),
    # so on any machine, however slow or busy, team-a resumes from a step > 0.
    assert a["resumed"] is True and 0 < a["resumed_from"] < 3600
    assert b["resumed"] is False and b["resumed_from"] is None
    times = [e["time_s"] for e in report["events"]]
    assert times == sorted(times)
    log = (tmp_path / "state" / "jobs" / "team-a" / "a-ddp-digits" / "logs" / "pod-0.log").read_text()
    final = re.findall(r"FINAL accuracy=([\d.]+) steps=(\d+) resumed_from=(\d+)", log)[-1]
    assert float(final[0]) >= 0.9 and int(final[1]) == 3600
    assert int(final[2]) == a["resumed_from"], "the report says the step the job resumed from"
    shares = {t["tenant"]: t for t in report["tenants"]}
    assert shares["team-a"]["entitlement"] == shares["team-b"]["entitlement"] == 0.5
    assert shares["team-a"]["gpu_seconds"] > shares["team-b"]["gpu_seconds"] > 0
