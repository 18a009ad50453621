"""Kubernetes objects to the control core's records and back (pure, no server)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from shoal.control.records import JobRow, PodRecord
from shoal.domain.job import TrainingJob
from shoal.runtime.kubernetes.convert import (
    GPU,
    JobObject,
    claim_manifest,
    conditions_of,
    needs_service,
    node_of,
    nodes_of,
    pod_manifest,
    pod_status,
    quantity_mib,
    quantity_milli,
    reported_step,
    row_of,
    service_manifest,
    service_name,
    status_of,
    worker_job,
)


def k8s_node(name: str, gpus: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "A100",
                                              "nvidia.com/gpu.memory": "81920",
                                              "kubernetes.io/hostname": name}},
        "spec": extra.get("spec", {}),
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", GPU: str(gpus), "pods": "110"},
            "conditions": [{"type": "Ready", "status": extra.get("ready", "True")}],
        },
    }


def test_quantities() -> None:
    assert quantity_milli("32") == 32_000
    assert quantity_milli("500m") == 500
    assert quantity_milli("1.5") == 1_500
    assert quantity_mib("256Gi") == 256 * 1024
    assert quantity_mib("1Mi") == 1
    assert quantity_mib("2e9") == 1907
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity_milli("12 cores")


def test_a_node_becomes_a_node_with_its_gpu_model_and_labels() -> None:
    node = node_of(k8s_node("n1", spec={"taints": [{"key": "dedicated", "value": "ml",
                                                    "effect": "NoSchedule"}]}))
    assert node is not None
    assert (node.name, node.cpu, node.memory) == ("n1", 32_000, 256 * 1024)
    assert (node.gpu_model, node.gpu_count, node.gpu_memory) == ("A100", 8, 81920)
    assert node.labels["kubernetes.io/hostname"] == "n1"
    assert [(t.key, t.value, t.effect) for t in node.taints] == [("dedicated", "ml", "NoSchedule")]


def test_cordoned_and_unready_nodes_take_no_pods() -> None:
    assert node_of(k8s_node("n1", spec={"unschedulable": True})) is None
    assert node_of(k8s_node("n1", ready="False")) is None
    cpu_only = node_of(k8s_node("n1", gpus=0))
    assert cpu_only is not None and (cpu_only.gpu_count, cpu_only.gpu_model) == (0, "")


def test_pods_of_other_schedulers_hold_room_but_shoals_do_not() -> None:
    def pod(labels: dict[str, str], phase: str = "Running") -> dict[str, Any]:
        return {
            "metadata": {"name": "p", "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"resources": {
                "requests": {"cpu": "2", "memory": "1Gi"}, "limits": {GPU: "3"}}}]},
            "status": {"phase": phase},
        }

    nodes = nodes_of([k8s_node("n1"), k8s_node("n0")],
                     [pod({}), pod({"shoal.dev/job": "x"}), pod({}, "Succeeded")])
    assert [n.name for n in nodes] == ["n0", "n1"]
    assert (nodes[1].cpu, nodes[1].memory, nodes[1].gpu_count) == (30_000, 255 * 1024, 5)
    assert (nodes[0].cpu, nodes[0].gpu_count) == (32_000, 8)


def training_job(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": "train", "namespace": "team-a", "uid": "u-1", "resourceVersion": "42",
            "creationTimestamp": "2026-01-02T03:04:05Z",
            "annotations": {"fake-kubelet/run-seconds": "5",
                            "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
        },
        "spec": {"tenant": "team-a", "podSets": [
            {"count": 2, "resources": {"cpu": "2", "memory": "4Gi", "gpu": {"count": 1}}}],
            **spec},
    }
    if status is not None:
        obj["status"] = status
    return obj


def test_a_new_training_job_is_a_pending_record_versioned_by_its_resource_version() -> None:
    row = row_of(training_job())
    assert (row.name, row.tenant, row.phase, row.version) == ("team-a/train", "team-a",
                                                            "Pending", 42)
    assert row.submit_time == 1767323045.0
    # The manifest is the embedded runtime's: the object's spec and its own annotations.
    job = TrainingJob.model_validate(row.manifest)
    assert job.metadata.annotations == {"fake-kubelet/run-seconds": "5"}
    assert job.spec.pod_sets[0].count == 2


def test_status_round_trips_every_field_the_state_machine_keeps() -> None:
    pods = (PodRecord(index=0, node="n1", gpus=(3,), uid="abc", started_at=100.0,
                      state="running", handle="train-abc"),
            PodRecord(index=1, node="n2", gpus=(0,), uid="def", started_at=100.5))
    before = row_of(training_job())
    job = JobRow(**{**before.__dict__, "phase": "Preempting", "attempts": 2, "preemptions": 1,
                    "lost_seconds": 12.5, "start_time": 90.0, "reason": "preempted: reclaim",
                    "pods": pods, "stop_cause": "preempted", "stop_deadline": 130.0,
                    "preemptor": "team-b/big", "preemptor_attempts": 0, "failures": 1,
                    "ran_seconds": 40.0,
                    "queued_at": 10.0, "checkpoint_time": 95.0, "checkpoint_step": 7,
                    "resumed_from": 3, "next_attempt_at": None})
    status = status_of(job, 2000)
    assert status["admitted"] is True and status["gpus"] == 2.0
    assert "" not in _strings(status), "empty strings are refused by the 1.20 API server"
    after = row_of(training_job(status))
    assert after == JobRow(**{**job.__dict__, "version": 42})


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_a_pod_is_shoals_to_schedule_and_carries_rank_gpus_and_annotations() -> None:
    obj = training_job(image="registry.example/train:1", command=["python", "train.py"],
                       env={"LR": "0.1"})
    row = row_of(obj)
    spec = TrainingJob.model_validate(row.manifest).spec
    pod = PodRecord(index=1, node="n2", gpus=(4,), uid="0123456789abcdef", started_at=1.0)
    body = pod_manifest(JobObject(obj), row, pod, spec, 30)
    assert body["metadata"]["name"] == "train-0123456789ab"
    assert body["metadata"]["labels"] == {"shoal.dev/job": "train",
                                          "shoal.dev/pod-uid": "0123456789abcdef"}
    assert body["metadata"]["annotations"]["fake-kubelet/run-seconds"] == "5"
    assert body["metadata"]["annotations"]["shoal.dev/gpu-index"] == "4"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert body["spec"]["schedulerName"] == "shoal"
    assert "nodeName" not in body["spec"], "bound through the Binding API, not at creation"
    # A tenant's pod: no API token, no root, no privilege, no capability.
    assert body["spec"]["automountServiceAccountToken"] is False
    assert body["spec"]["securityContext"]["runAsNonRoot"] is True
    assert body["spec"]["securityContext"]["runAsUser"] == 65534
    assert body["spec"]["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    container = body["spec"]["containers"][0]
    assert container["image"] == "registry.example/train:1"
    assert container["command"] == ["python", "train.py"]
    assert container["resources"]["limits"] == {GPU: "1"}
    assert container["resources"]["requests"] == {"cpu": "2000m", "memory": "4096Mi", GPU: "1"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"LR": "0.1", "RANK": "1", "WORLD_SIZE": "2", "SHOAL_JOB": "team-a/train",
                   "MASTER_ADDR": "worker-0.tj-train.team-a.svc", "MASTER_PORT": "29500"}
    # Its DNS name under the job's headless Service: worker-<rank>.<service>.
    assert (body["spec"]["hostname"], body["spec"]["subdomain"]) == ("worker-1", "tj-train")
    assert "volumes" not in body["spec"], "a job that does not checkpoint gets no claim"


def test_a_job_of_one_pod_is_its_own_master_and_gets_no_service() -> None:
    obj = training_job()
    obj["spec"]["podSets"][0]["count"] = 1
    row = row_of(obj)
    spec = TrainingJob.model_validate(row.manifest).spec
    pod = PodRecord(index=0, node="n1", gpus=(0,), uid="0123456789abcdef", started_at=1.0)
    body = pod_manifest(JobObject(obj), row, pod, spec, 30)
    env = {e["name"]: e["value"] for e in body["spec"]["containers"][0]["env"]}
    assert (env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("1", "127.0.0.1")
    assert "subdomain" not in body["spec"], "no Service to be a subdomain of"
    assert not needs_service(spec)
    assert needs_service(TrainingJob.model_validate(row_of(training_job()).manifest).spec)


def test_each_pod_is_a_job_of_one_pod_that_the_job_controller_never_retries() -> None:
    obj = training_job()
    row = row_of(obj)
    spec = TrainingJob.model_validate(row.manifest).spec
    pod = PodRecord(index=0, node="n1", gpus=(0,), uid="0123456789abcdef", started_at=1.0)
    body = worker_job(JobObject(obj), row, pod, spec, 30)
    assert (body["apiVersion"], body["kind"]) == ("batch/v1", "Job")
    assert body["metadata"]["name"] == "train-0123456789ab"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    job_spec = body["spec"]
    assert (job_spec["parallelism"], job_spec["completions"], job_spec["backoffLimit"]) == (
        1, 1, 0)
    template = job_spec["template"]
    assert template["metadata"]["labels"] == {"shoal.dev/job": "train",
                                              "shoal.dev/pod-uid": "0123456789abcdef"}
    assert template["metadata"]["annotations"]["shoal.dev/rank"] == "0"
    assert template["spec"]["schedulerName"] == "shoal"
    assert template["spec"]["restartPolicy"] == "Never"
    assert "ownerReferences" not in template["metadata"], "the Job controller owns its pod"


def test_the_headless_service_selects_the_jobs_pods_even_before_they_are_ready() -> None:
    service = service_manifest(JobObject(training_job()))
    assert service["metadata"]["name"] == "tj-train"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"shoal.dev/job": "train"}
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"


@pytest.mark.parametrize("name", ["0-starts-with-a-digit", "has.dots.in.it", "x" * 200])
def test_a_service_name_is_always_a_dns_label(name: str) -> None:
    obj = training_job()
    obj["metadata"]["name"] = name
    service = service_name(JobObject(obj))
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", service), service
    other = dict(obj, metadata={**obj["metadata"], "name": name.replace("-", ".")})
    if other["metadata"]["name"] != name:
        assert service_name(JobObject(other)) != service


def test_a_job_that_checkpoints_gets_a_claim_mounted_where_the_env_says() -> None:
    obj = training_job(checkpointIntervalSeconds=60)
    obj["metadata"]["annotations"]["shoal.dev/checkpoint-size"] = "50Gi"
    row = row_of(obj)
    spec = TrainingJob.model_validate(row.manifest).spec
    job = JobObject(obj)
    claim = claim_manifest(job, spec)
    assert claim["metadata"]["name"] == "train-checkpoints"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "two pods, maybe two nodes"
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    pod = PodRecord(index=0, node="n1", gpus=(0,), uid="abc", started_at=1.0)
    body = pod_manifest(job, row, pod, spec, 30)
    assert body["spec"]["volumes"] == [{"name": "checkpoints", "persistentVolumeClaim": {
        "claimName": "train-checkpoints"}}]
    container = body["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["volumeMounts"] == [{"name": "checkpoints",
                                          "mountPath": env["SHOAL_CHECKPOINT_DIR"]}]
    assert body["spec"]["securityContext"]["fsGroup"] == 65534


@pytest.mark.parametrize(
    ("annotation", "message", "expected"),
    [
        (None, None, None),
        ('{"step": 120}', None, 120),
        (None, '{"step": 7}', 7),
        ('{"step": 3}', '{"step": 9}', 9),
        ('{"step": -1}', "not json", None),
        ('{"step": true}', '[1, 2]', None),
        ("[" * 5000, '{"step": "12"}', None),
    ],
)
def test_the_checkpoint_a_pod_reports(annotation: str | None, message: str | None,
                                      expected: int | None) -> None:
    pod: dict[str, Any] = {"metadata": {"annotations": {}}, "status": {}}
    if annotation is not None:
        pod["metadata"]["annotations"]["shoal.dev/checkpoint"] = annotation
    if message is not None:
        pod["status"]["containerStatuses"] = [{"state": {"terminated": {
            "exitCode": 143, "message": message}}}]
    assert reported_step(pod) == expected


def test_conditions_say_why_a_job_waits_and_why_it_was_requeued() -> None:
    pending = row_of(training_job())
    [admitted] = conditions_of(pending.evolve(reason="quota: 16 GPUs asked, 8 free"))
    assert (admitted.type, admitted.status, admitted.reason) == ("Admitted", "False", "Waiting")
    assert admitted.message == "quota: 16 GPUs asked, 8 free"
    pods = (PodRecord(index=0, node="n1", gpus=(0,), uid="a", started_at=100.0),)
    running = pending.evolve(phase="Running", attempts=1, pods=pods)
    [admitted] = conditions_of(running)
    assert (admitted.status, admitted.reason) == ("True", "Admitted")
    assert "n1" in admitted.message
    lost = pending.evolve(attempts=1, preemptions=1, queued_at=150.0,
                          reason="pod train-x is gone (deleted)")
    admitted, requeued = conditions_of(lost)
    assert (requeued.type, requeued.reason) == ("Requeued", "PodLost")
    assert requeued.message == "pod train-x is gone (deleted)"
    # Kept, with what it said then, while the job waits for another reason and runs again.
    previous = [c.model_dump(mode="json", by_alias=True) for c in (admitted, requeued)]
    later = conditions_of(lost.evolve(reason="waiting for room"), previous)
    assert later[1] == requeued
    again = conditions_of(running.evolve(attempts=2, preemptions=1, queued_at=150.0), previous)
    assert [c.type for c in again] == ["Admitted", "Requeued"] and again[1] == requeued
    timed_out = conditions_of(lost.evolve(queued_at=200.0, reason="not bound within 30 s: x"),
                              previous)
    assert timed_out[1].reason == "BindTimeout"
    retried = conditions_of(lost.evolve(queued_at=300.0, failures=1, preemptions=0,
                                        reason="retrying after: exit 3"), previous)
    assert (retried[0].reason, retried[1].reason) == ("BackingOff", "AttemptFailed")


@pytest.mark.parametrize(
    ("phase", "terminated", "expected"),
    [
        ("Pending", None, ("running", None)),
        ("Running", None, ("running", None)),
        ("Succeeded", {"exitCode": 0}, ("succeeded", 0)),
        ("Failed", {"exitCode": 3}, ("failed", 3)),
        ("Failed", {"exitCode": 137, "reason": "OOMKilled"}, ("oom_killed", 137)),
        ("Failed", {"exitCode": 143}, ("signalled", 143)),
        ("Unknown", None, ("lost", None)),
    ],
)
def test_pod_phases(phase: str, terminated: dict[str, Any] | None,
                    expected: tuple[str, int | None]) -> None:
    statuses = [{"state": {"terminated": terminated}}] if terminated else []
    got = pod_status({"status": {"phase": phase, "containerStatuses": statuses}})
    assert (got.state, got.exit_code) == expected


def test_a_pod_that_is_gone_is_lost() -> None:
    assert pod_status(None).state == "lost"
