"""A hostile tenant cannot run uncharged: default requests, pod quotas, pods per job."""

from __future__ import annotations

import pytest

from shoal.app.checks import offline_checks, with_tenant_defaults
from shoal.domain.job import MAX_PODS_PER_JOB, DefaultRequests, TrainingJob
from shoal.domain.manifest import parse_manifests
from shoal.domain.tenant import TenantSpec
from shoal.domain.workload import from_training_job
from shoal.errors import ManifestError
from shoal.policy import flavors
from shoal.policy.decisions import Admit, Inadmissible, Pending
from shoal.policy.quota import TenantQuota, check
from tests.unit.builders import cluster, start, tenant, tenants, workload
from tests.unit.test_admission import run_cycle


def job(resources: str = "{}", count: int = 2, tenant: str = "team-a") -> TrainingJob:
    [manifest] = parse_manifests(
        f"""\
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {{name: j}}
spec:
  tenant: {tenant}
  podSets:
  - {{name: w, count: {count}, resources: {resources}}}
""",
        "j.yaml",
    )
    assert isinstance(manifest, TrainingJob)
    return manifest


TENANT_DEFAULTS = {"defaultRequests": {"cpu": "500m", "memory": "2Gi"}, "quota": {}}


def test_pods_that_request_nothing_get_shoals_defaults() -> None:
    pods = from_training_job(job()).pods
    assert [(p.cpu, p.memory) for p in pods] == [(100, 256), (100, 256)]
    stored = with_tenant_defaults(job(), {"team-a": {"quota": {}}})
    assert stored.spec.pod_sets[0].resources.cpu == 100
    assert stored.model_dump(mode="json", by_alias=True)["spec"]["podSets"][0]["resources"][
        "memory"
    ] == "256Mi"


def test_the_tenants_defaults_come_first_and_are_what_is_stored() -> None:
    stored = with_tenant_defaults(job(), {"team-a": TENANT_DEFAULTS})
    resources = stored.spec.pod_sets[0].resources
    assert (resources.cpu, resources.memory) == (500, 2048)
    # The stored job is what the scheduler and the runtime read back.
    again = TrainingJob.model_validate(stored.model_dump(mode="json", by_alias=True))
    assert [(p.cpu, p.memory) for p in from_training_job(again).pods] == [(500, 2048)] * 2
    defaults = TenantSpec.model_validate(TENANT_DEFAULTS).default_requests
    assert from_training_job(job(), defaults=defaults).pods == from_training_job(stored).pods


def test_defaults_fill_only_what_is_missing() -> None:
    only_cpu = with_tenant_defaults(job("{cpu: 2}"), {"team-a": TENANT_DEFAULTS})
    resources = only_cpu.spec.pod_sets[0].resources
    assert (resources.cpu, resources.memory) == (2000, 2048)
    full = job("{cpu: 2, memory: 1Gi}")
    assert with_tenant_defaults(full, {"team-a": TENANT_DEFAULTS}) is full
    partial = TenantSpec.model_validate({"defaultRequests": {"memory": "1Gi"}})
    assert isinstance(partial.default_requests, DefaultRequests)
    assert (partial.default_requests.cpu, partial.default_requests.memory) == (100, 1024)


def test_a_zero_default_is_refused() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        TenantSpec.model_validate({"defaultRequests": {"cpu": 0}})


def test_validate_applies_the_tenants_defaults_before_checking_fit() -> None:
    # Offline checks see the numbers apply would store: 2 x 2Gi does not fit 1Gi nodes.
    text = """\
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec: {defaultRequests: {memory: 2Gi}, quota: {cpu: {nominal: 4}, memory: {nominal: 8Gi}}}
---
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: small}
spec: {count: 1, cpu: 4, memory: 1Gi}
---
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {name: j}
spec:
  tenant: team-a
  podSets: [{name: w, count: 1}]
"""
    with pytest.raises(Exception, match="larger than any node"):
        offline_checks(parse_manifests(text, "all.yaml"), strict=True)


def test_every_pod_is_charged_one_pod() -> None:
    work = from_training_job(job(count=3))
    assert flavors.request(work, None) == {"cpu": 300, "memory": 768, "pods": 3}


def pods_tenant(nominal: int, **limits: int) -> TenantQuota:
    spec = {
        "quota": {
            "cpu": {"nominal": 100},
            "memory": {"nominal": "1Ti"},
            "gpus": {"A100": {"nominal": 16}},
            "pods": {"nominal": nominal, **limits},
        }
    }
    return TenantQuota.from_spec("team-a", TenantSpec.model_validate(spec))


def test_a_pods_quota_admits_a_gang_of_four_and_keeps_a_fifth_pod_pending() -> None:
    quotas = tenants(pods_tenant(4))
    gang = workload("gang", "team-a", gpus=0, pods=4, cpu=0.1)
    fifth = workload("fifth", "team-a", gpus=0, pods=1, cpu=0.1, submit=1)
    result = run_cycle(quotas, cluster(8, 8), [gang, fifth])
    admitted = result.for_workload("gang")
    assert isinstance(admitted, Admit) and admitted.usage["pods"] == 4
    pending = result.for_workload("fifth")
    assert isinstance(pending, Pending)
    assert pending.reason == (
        "pods: needs 1 pod, team-a can get 0 pods now "
        "(4 pods nominal, 4 pods in use, no cohort to borrow from)"
    )


def test_a_pods_quota_is_checked_like_any_other_resource() -> None:
    quotas = tenants(pods_tenant(4))
    result = run_cycle(quotas, cluster(8, 8), [workload("big", "team-a", gpus=0, pods=5)])
    decision = result.for_workload("big")
    assert isinstance(decision, Inadmissible)
    assert "pods: requests 5 pods, more than tenant team-a could ever get (4 pods)" in (
        decision.reason
    )
    state = cluster(8, 8)
    running = start(state, workload("r", "team-a", gpus=0, pods=4))
    usage = {"team-a": running.usage}
    assert check(quotas, usage, "team-a", {"pods": 1}).resource == "pods"


def test_pods_are_borrowed_within_a_cohort() -> None:
    a = TenantQuota.from_spec(
        "a", TenantSpec.model_validate({"cohort": "c", "quota": {"pods": {"nominal": 2}}})
    )
    b = TenantQuota.from_spec(
        "b", TenantSpec.model_validate({"cohort": "c", "quota": {"pods": {"nominal": 2}}})
    )
    quotas = tenants(a, b)
    fits = check(quotas, {"a": {"pods": 2}}, "a", {"pods": 2})
    assert fits.fits and fits.borrowing
    full = check(quotas, {"a": {"pods": 2}, "b": {"pods": 1}}, "a", {"pods": 2})
    assert not full.fits and "1 pod borrowable from cohort c" in full.reason


def test_a_tenant_without_a_pods_quota_runs_any_number_of_pods() -> None:
    quotas = tenants(tenant("a", 16, cohort="c"), tenant("b", 16, cohort="c"))
    result = run_cycle(quotas, cluster(8, 8), [workload("many", "a", gpus=0, pods=200, cpu=0.1)])
    assert isinstance(result.for_workload("many"), Admit)
    # Unlimited pods are never lent nor borrowed, so reclaim and fair share ignore them.
    assert check(quotas, {"a": {"pods": 10**6}}, "a", {"pods": 10**6}).fits
    assert not check(quotas, {"a": {"pods": 10**6}}, "a", {"pods": 10**6}).borrowing


def test_a_job_of_too_many_pods_is_refused_with_the_field() -> None:
    with pytest.raises(ManifestError) as info:
        job(count=2000)
    assert "spec.podSets[0].count" in str(info.value)
    assert str(MAX_PODS_PER_JOB) in str(info.value)
    two_sets = """\
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {name: j}
spec:
  tenant: team-a
  podSets:
  - {name: a, count: 1000}
  - {name: b, count: 1000}
"""
    with pytest.raises(ManifestError) as info:
        parse_manifests(two_sets, "j.yaml")
    assert "spec.podSets: 2000 pods in all; a job may have at most 1024 pods" in str(info.value)
