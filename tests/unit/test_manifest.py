"""Manifest parsing: every kind, and errors that name file, line, field and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.domain.job import TrainingJob
from shoal.domain.manifest import KINDS, load_manifest_file, parse_manifests
from shoal.domain.nodes import NodePool
from shoal.domain.simulation import Simulation
from shoal.domain.tenant import Tenant
from shoal.errors import ManifestError

ALL_KINDS = """\
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: a100}
spec:
  count: 4
  cpu: 64
  memory: 512Gi
  gpus: {model: A100, count: 8, memory: 80Gi}
  topology: {nodesPerRack: 2}
---
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: vision}
spec:
  cohort: lab
  weight: 2
  quota:
    gpus:
      A100: {nominal: 16, borrowingLimit: 8}
---
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {name: train-resnet}
spec:
  tenant: vision
  priority: high
  podSets:
    - count: 2
      resources: {cpu: 8, memory: 64Gi, gpu: 4}
    - name: eval
      resources: {cpu: "500m", gpu: {fraction: 0.5, memory: 20Gi}}
---
apiVersion: shoal.dev/v1alpha1
kind: Simulation
metadata: {name: fgd-openb}
spec:
  cluster: {nodesFromTrace: true}
  trace: {path: traces/openb, format: openb}
  mode: fill
  policies: [fgd, best-fit]
  seeds: 42-51
---
"""


def parse_one(text: str) -> object:
    [manifest] = parse_manifests(text, "m.yaml")
    return manifest


def error_of(text: str, source: str = "m.yaml") -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifests(text, source)
    return str(info.value)


def job(resources: str) -> str:
    return f"""\
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata:
  name: train
spec:
  tenant: vision
  podSets:
    - name: worker
      resources:
        {resources}
"""


def test_every_kind_parses() -> None:
    pool, tenant, training, sim = parse_manifests(ALL_KINDS, "all.yaml")
    assert isinstance(pool, NodePool) and pool.spec.gpus is not None
    assert pool.spec.gpus.memory == 80 * 1024
    assert isinstance(tenant, Tenant) and tenant.spec.quota.gpus["A100"].nominal == 16_000
    assert isinstance(training, TrainingJob) and training.spec.priority_value == 1000
    assert training.spec.pod_sets[1].resources.gpu is not None
    assert training.spec.pod_sets[1].resources.gpu.milli_per_gpu == 500
    assert isinstance(sim, Simulation) and sim.spec.seeds == list(range(42, 52))
    assert set(KINDS) == {"NodePool", "Tenant", "TrainingJob", "Simulation", "InferenceService"}


def test_empty_text_has_no_manifests() -> None:
    assert parse_manifests("", "m.yaml") == []
    assert parse_manifests("---\n# nothing\n---\n", "m.yaml") == []


def test_malformed_yaml_gives_line_and_column() -> None:
    message = error_of("apiVersion: shoal.dev/v1alpha1\nkind: [Tenant\nmetadata: {}\n")
    assert message.startswith("m.yaml:3:9: invalid YAML: ")
    assert "expected ',' or ']'" in message


def test_bad_indentation() -> None:
    message = error_of("spec:\n  cpu: 1\n bad: 2\n")
    assert message.startswith("m.yaml:3:2: invalid YAML:")


def test_unknown_field_suggests_the_right_one() -> None:
    text = """\
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: vision}
spec:
  quota:
    gpus:
      A100:
        nominal: 8
        borowingLimit: 4
"""
    assert error_of(text, "tenants/vision.yaml") == (
        "tenants/vision.yaml:9: spec.quota.gpus.A100.borowingLimit: "
        "unknown field 'borowingLimit'; did you mean 'borrowingLimit'?"
    )


def test_unknown_field_lists_the_known_ones() -> None:
    message = error_of(job("cpu: 1\n        colour: red"))
    assert message == (
        "m.yaml:11: spec.podSets[0].resources.colour: "
        "unknown field 'colour'; expected one of cpu, memory, gpu"
    )


def test_negative_cpu() -> None:
    assert error_of(job("cpu: -2")) == (
        "m.yaml:10: spec.podSets[0].resources.cpu: must not be negative, got -2"
    )


def test_gpu_fraction_above_one() -> None:
    message = error_of(job("gpu:\n          fraction: 1.5"))
    assert message.startswith("m.yaml:11: spec.podSets[0].resources.gpu.fraction: ")
    assert "a GPU fraction must be at most 1, got 1.5" in message


def test_wrong_type_says_what_was_expected_and_got() -> None:
    message = error_of(job("gpu: {count: many}"))
    assert message == (
        "m.yaml:10: spec.podSets[0].resources.gpu.count: expected a valid integer, got 'many'"
    )


def test_wrong_api_version() -> None:
    text = "apiVersion: v1\nkind: Tenant\nmetadata: {name: a}\nspec: {}\n"
    assert error_of(text) == "m.yaml:1: apiVersion: expected 'shoal.dev/v1alpha1', got 'v1'"
    missing = error_of("kind: Tenant\nmetadata: {name: a}\n")
    assert missing == "m.yaml:1: apiVersion: expected 'shoal.dev/v1alpha1', it is missing"


def test_unknown_kind_lists_known_kinds() -> None:
    text = "apiVersion: shoal.dev/v1alpha1\nmetadata: {name: a}\nkind: Deployment\n"
    assert error_of(text) == (
        "m.yaml:3: unknown kind 'Deployment'; "
        "expected one of InferenceService, NodePool, Simulation, Tenant, TrainingJob"
    )


def test_error_in_a_later_document_has_its_own_line() -> None:
    text = ALL_KINDS + "apiVersion: shoal.dev/v1alpha1\nkind: NodePool\nmetadata: {name: x}\n"
    assert error_of(text) == "m.yaml:43: spec: required field is missing"


def test_all_errors_of_a_document_in_one_exception() -> None:
    text = """\
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata:
  name: Big_Pool
spec:
  count: -1
  cpu: 4
  memory: 16Gi
  taints:
    - key: gpu
      effect: Never
"""
    lines = error_of(text).splitlines()
    assert lines[0] == "m.yaml: NodePool 'Big_Pool' has 3 errors:"
    assert lines[1].startswith("  m.yaml:4: metadata.name: expected a lowercase name")
    assert lines[2] == (
        "  m.yaml:6: spec.count: expected a value greater than or equal to 0, got -1"
    )
    assert lines[3] == (
        "  m.yaml:11: spec.taints[0].effect: "
        "expected 'NoSchedule', 'PreferNoSchedule' or 'NoExecute', got 'Never'"
    )


def test_union_alternatives_share_one_line() -> None:
    text = (
        "apiVersion: shoal.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a}\n"
        "spec:\n  allowedPriorities: [high, 1.5]\n"
    )
    assert error_of(text) == (
        "m.yaml:5: spec.allowedPriorities[1]: expected a valid integer or a valid string, got 1.5"
    )


def test_simulation_rule_points_at_the_field() -> None:
    text = """\
apiVersion: shoal.dev/v1alpha1
kind: Simulation
metadata: {name: s}
spec:
  cluster:
    nodePools: [{name: a, count: 1, cpu: 4, memory: 8Gi}]
  trace:
    path: jobs.csv
    format: openb
    columns: {gpus: gpu_count}
  mode: fill
  policies: [fgd]
"""
    assert error_of(text) == (
        "m.yaml:10: spec.trace.columns: columns is for csv traces; this trace is openb"
    )


def test_duplicate_keys_are_errors() -> None:
    text = "apiVersion: shoal.dev/v1alpha1\nkind: Tenant\nkind: Tenant\n"
    assert error_of(text) == "m.yaml:3: duplicate key 'kind'"


def test_a_document_must_be_a_mapping() -> None:
    assert error_of("- a\n- b\n").startswith("m.yaml:1: expected a mapping with apiVersion")


def test_python_tags_are_refused() -> None:
    message = error_of("a: !!python/object:os.system {}\n")
    assert message.startswith("m.yaml:1:4: invalid YAML:")


def test_load_manifest_file(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text(ALL_KINDS)
    assert len(load_manifest_file(path)) == 4
    with pytest.raises(ManifestError, match=r"missing.yaml: file not found"):
        load_manifest_file(tmp_path / "missing.yaml")
    with pytest.raises(ManifestError, match="is a folder"):
        load_manifest_file(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ManifestError, match="cannot read: not UTF-8"):
        load_manifest_file(binary)
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [\n")
    with pytest.raises(ManifestError, match=rf"^{bad}:2:1: invalid YAML"):
        load_manifest_file(bad)


def test_specs_round_trip_through_json() -> None:
    text = """
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: t}
spec:
  cohort: lab
  quota:
    cpu: {nominal: 2.5, borrowingLimit: 1}
    memory: {nominal: 4Gi}
    gpus: {A100: {nominal: 1.5, lendingLimit: 1}}
---
apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: p}
spec: {count: 2, cpu: 64, memory: 512Gi, gpus: {model: A100, count: 8, memory: 80Gi}}
---
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {name: j}
spec:
  tenant: t
  podSets: [{count: 2, resources: {cpu: 500m, memory: 1Gi, gpu: {fraction: 0.5, memory: 10Gi}}}]
"""
    for manifest in parse_manifests(text, "m.yaml"):
        dumped = manifest.model_dump(mode="json", by_alias=True)
        again = type(manifest).model_validate(dumped)
        assert again == manifest, manifest.kind



def _laughs(levels: int, width: int = 9) -> str:
    """A TrainingJob whose command is a "billion laughs" alias bomb (width**levels strings)."""
    rows = "\n".join(f"    - &x{i} [" + ",".join([f"*x{i - 1}"] * width) + "]"
                     for i in range(1, levels + 1))
    return ("apiVersion: shoal.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: t}\n"
            "spec:\n  tenant: a\n  podSets: [{count: 1}]\n  command:\n"
            f'    - &x0 ["{"x" * 64}"]\n{rows}\n')


@pytest.mark.parametrize("levels", [6, 12])
def test_an_alias_bomb_is_refused_without_expanding_it(levels: int) -> None:
    import time

    text = _laughs(levels)
    assert len(text) < 1000
    started = time.process_time()
    with pytest.raises(ManifestError, match="aliases expand the document past 1,048,576"):
        parse_manifests(text, "bomb.yaml")
    # 9**12 strings would take hours to walk: the check counts each node once.
    assert time.process_time() - started < 5


def test_a_few_aliases_are_fine() -> None:
    text = ("apiVersion: shoal.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: t}\n"
            "spec:\n  tenant: a\n  podSets: [{count: 1}]\n"
            "  env: &e {A: '1'}\n  command: [sh, -c, &c 'echo hi']\n")
    assert parse_manifests(text, "ok.yaml")[0].spec.command == ["sh", "-c", "echo hi"]


@pytest.mark.parametrize(("text", "message"), [
    ("a: &a [*a]\n", "nested too deeply|refers to itself"),
    ("[" * 3000 + "]" * 3000, "nested too deeply"),
    ("{a: " * 3000 + "1" + "}" * 3000, "nested too deeply"),
])
def test_self_references_and_deep_nesting_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifests(text, "odd.yaml")
