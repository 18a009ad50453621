"""GET /metrics: the control plane's Prometheus endpoint, read with Prometheus' own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from shoal.api import launch
from shoal.api.client import ShoalClient
from tests.control.conftest import job, phase, wait_for

SLEEPER = ["python", "-c", "import signal, sys; signal.sigwait({signal.SIGTERM}); sys.exit(0)"]


def scrape(plane: launch.Running, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{plane.url}/metrics", headers=headers, timeout=30)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_quota_use_and_jobs_per_phase_in_base_units(plane: launch.Running,
                                                     admin: ShoalClient) -> None:
    admin.apply_text(job("metered", "team-a", SLEEPER, gpus=3), "m.yaml")
    wait_for(lambda: phase(admin, "metered") == "Running")
    response = scrape(plane, plane.token)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    gpu = ("resource", "gpu/virtual")
    assert found[("shoal_tenant_quota_used", (gpu, ("tenant", "team-a")))] == 3.0
    assert found[("shoal_tenant_quota_borrowed", (gpu, ("tenant", "team-a")))] == 1.0
    assert found[("shoal_tenant_quota_nominal", (gpu, ("tenant", "team-a")))] == 2.0
    assert found[("shoal_jobs", (("phase", "Running"), ("tenant", "team-a")))] >= 1.0
    assert found[("shoal_jobs", (("phase", "Failed"), ("tenant", "team-a")))] == 0.0


def test_only_an_admin_may_scrape(plane: launch.Running, admin: ShoalClient) -> None:
    assert scrape(plane, None).status_code == 401
    tenant = scrape(plane, admin.create_token("team-a"))
    assert tenant.status_code == 403
    assert "admin" in tenant.json()["error"]["message"]
