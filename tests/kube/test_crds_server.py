"""The generated CRDs on a real kube-apiserver v1.20.2: accepted, validating, fenced, printed.

Raw HTTP (``ControlPlane.http``) where the test is about the wire: the
status code of a refused object, a Table of printer columns.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from shoal.runtime.kubernetes import status
from tests.kube.conftest import ControlPlane
from tests.kube.manifests import a_job, edit, example_documents, without_shorthands

pytestmark = pytest.mark.kube

JOBS = "/apis/shoal.dev/v1alpha1/namespaces/default/trainingjobs"
TENANTS = "/apis/shoal.dev/v1alpha1/tenants"
SERVICES = "/apis/shoal.dev/v1alpha1/namespaces/default/inferenceservices"


@pytest.fixture
def http(control_plane: ControlPlane, crds: object) -> Iterator[httpx.Client]:
    with control_plane.http() as client:
        yield client


def test_the_server_takes_the_examples(http: httpx.Client) -> None:
    for name, doc in example_documents():
        doc = without_shorthands(doc)
        # names of their own, so that no other test meets these tenants
        doc["metadata"]["name"] = f"example-{doc['metadata']['name']}-{len(name)}-{name[-1]}"
        if doc["kind"] == "Tenant":
            doc["spec"].pop("cohort", None)
        where = {"Tenant": TENANTS, "InferenceService": SERVICES}.get(doc["kind"], JOBS)
        response = http.post(where, json=doc)
        assert response.status_code == 201, (name, response.text)


def test_the_server_refuses_invalid_values(http: httpx.Client) -> None:
    for bad in (edit("spec.podSets.0.count", 0), a_job() | {"spec": {"tenant": "t"}},
                edit("spec.podSets.0.resources.gpu", 2)):
        bad["metadata"] = {"generateName": "bad-"}
        response = http.post(JOBS, json=bad)
        assert response.status_code == 422, response.text


def test_unknown_fields_are_pruned_by_1_20_or_refused_by_newer(http: httpx.Client) -> None:
    doc = edit("spec.podSets.0.resources.gpu.fration", 0.5)
    doc["metadata"] = {"name": "typo"}
    response = http.post(JOBS, params={"fieldValidation": "Strict"}, json=doc)
    if response.status_code == 201:  # 1.20: pruned, silently
        assert "fration" not in response.json()["spec"]["podSets"][0]["resources"]["gpu"]
    else:  # 1.25+: refused
        assert response.status_code == 422, response.text


def test_status_is_a_fenced_subresource_with_columns(http: httpx.Client) -> None:
    doc = a_job() | {"metadata": {"name": "with-status"}}
    created = http.post(JOBS, json=doc).json()
    new = status.TrainingJobStatus(phase="Running", admitted=True, gpus=1.0)
    # Empty strings are left out: the v1.20 build here (Go 1.19) reads "" in a
    # custom resource as null (kubernetes/kubernetes#99804).
    body = created | {"status": new.model_dump(mode="json", by_alias=True, exclude_defaults=True),
                      "spec": {**created["spec"], "tenant": "changed"}}
    written = http.put(f"{JOBS}/with-status/status", json=body)
    assert written.status_code == 200, written.text
    assert written.json()["spec"]["tenant"] == "team-a"  # /status never writes the spec
    assert status.TrainingJobStatus.model_validate(written.json()["status"]) == new
    stale = http.put(f"{JOBS}/with-status/status", json=body)
    assert stale.status_code == 409
    table = http.get(JOBS, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    columns = [c["name"] for c in table.json()["columnDefinitions"]]
    assert columns[:6] == ["Name", "Tenant", "Phase", "Admitted", "GPUs", "Age"]
    row = next(r for r in table.json()["rows"] if r["cells"][0] == "with-status")
    assert row["cells"][1:5] == ["team-a", "Running", True, 1]
