"""The Simulation manifest model: defaults, seeds and cross-field rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shoal.domain.simulation import Simulation, SimulationSpec


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cluster": {
            "nodePools": [
                {
                    "name": "a100",
                    "count": 4,
                    "cpu": 64,
                    "memory": "512Gi",
                    "gpus": {"model": "A100", "count": 8},
                }
            ]
        },
        "trace": {"path": "jobs.csv", "format": "csv"},
        "mode": "fill",
        "policies": ["fgd", "best-fit"],
    }
    return {**base, **overrides}


def errors(data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as info:
        SimulationSpec.model_validate(data)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


def test_minimal_fill_defaults() -> None:
    sim = SimulationSpec.model_validate(spec())
    assert sim.seeds == [42]
    assert sim.fill_settings.target_gpu_share == 1.3
    assert sim.trace.time_format == "auto" and sim.trace.limit is None
    assert sim.tenants_from_trace is None
    assert sim.cluster.node_pools[0].cpu == 64_000


@pytest.mark.parametrize(
    ("seeds", "expected"),
    [(7, [7]), ("42-44", [42, 43, 44]), ("5", [5]), ([1, "3-4"], [1, 3, 4])],
)
def test_seed_forms(seeds: object, expected: list[int]) -> None:
    assert SimulationSpec.model_validate(spec(seeds=seeds)).seeds == expected


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ("51-42", "runs backwards"),
        ("42..51", "expected a seed"),
        (-1, "must not be negative"),
        ([], "empty list"),
        ([1, 1], "must not repeat"),
        (True, "expected a seed"),
    ],
)
def test_bad_seeds(seeds: object, message: str) -> None:
    [(loc, msg)] = errors(spec(seeds=seeds))
    assert loc == ("seeds",) and message in msg


def test_replay_defaults_to_tenants_from_trace() -> None:
    sim = SimulationSpec.model_validate(spec(mode="replay"))
    assert sim.tenants_from_trace is not None
    assert sim.tenants_from_trace.cohort == "shared"
    assert sim.tenants_from_trace.gpu_quota == "equal"
    assert sim.replay_settings.preemption is True


def test_replay_with_tenants_and_failures() -> None:
    sim = SimulationSpec.model_validate(
        spec(
            mode="replay",
            tenants=[
                {"name": "vision", "cohort": "lab", "quota": {"gpus": {"A100": {"nominal": 16}}}}
            ],
            replay={
                "checkpointIntervalSeconds": 600,
                "failures": [
                    {"atSeconds": 60, "pool": "a100", "downForSeconds": 300},
                    {"atSeconds": 90, "node": "a100-000"},
                ],
            },
        )
    )
    assert sim.tenants_from_trace is None
    assert sim.tenants[0].quota.gpus["A100"].nominal == 16_000
    assert sim.replay is not None and sim.replay.failures[1].node == "a100-000"


@pytest.mark.parametrize(
    ("overrides", "loc", "message"),
    [
        (
            {"trace": {"path": "t", "format": "openb", "columns": {"gpus": "g"}}},
            ("trace", "columns"),
            "csv",
        ),
        (
            {"trace": {"path": "t", "format": "openb", "timeFormat": "seconds"}},
            ("trace", "timeFormat"),
            "csv",
        ),
        (
            {"trace": {"path": "t", "format": "csv", "workload": "x"}},
            ("trace", "workload"),
            "openb",
        ),
        ({"cluster": {"nodesFromTrace": True}}, ("cluster", "nodesFromTrace"), "openb"),
        ({"cluster": {}}, ("cluster",), "no nodes"),
        ({"replay": {}}, ("replay",), "mode is fill"),
        ({"mode": "replay", "fill": {}}, ("fill",), "mode is replay"),
        ({"tenants": [{"name": "a"}], "tenantsFromTrace": {}}, ("tenantsFromTrace",), "not both"),
        ({"tenants": [{"name": "a"}, {"name": "a"}]}, ("tenants",), "unique"),
        ({"fill": {"targetGpuShare": 0}}, ("fill", "targetGpuShare"), "greater than 0"),
        ({"policies": []}, ("policies",), "at least 1"),
        ({"trace": {"path": "t", "format": "csv", "limit": 0}}, ("trace", "limit"), "greater than"),
        (
            {"mode": "replay", "replay": {"failures": [{"atSeconds": 1}]}},
            ("replay", "failures", 0),
            "exactly one of node or pool",
        ),
        (
            {"mode": "replay", "replay": {"failures": [{"atSeconds": 1, "pool": "h100"}]}},
            ("replay", "failures", 0, "pool"),
            "no node pool named 'h100'",
        ),
    ],
)
def test_inconsistent_specs_point_at_the_field(
    overrides: dict[str, Any], loc: tuple[str | int, ...], message: str
) -> None:
    [(got_loc, msg)] = errors(spec(**overrides))
    assert got_loc == loc
    assert message in msg


def test_openb_with_trace_nodes() -> None:
    sim = SimulationSpec.model_validate(
        spec(
            cluster={"nodesFromTrace": True},
            trace={"path": "../traces/openb", "format": "openb", "workload": "gpushare40"},
        )
    )
    assert sim.cluster.nodes_from_trace and sim.trace.workload == "gpushare40"


def test_csv_columns_mapping() -> None:
    columns = {"submitTime": "submitted_at", "gpus": "gpu_count", "tenant": "team"}
    sim = SimulationSpec.model_validate(
        spec(trace={"path": "j.csv", "format": "csv", "columns": columns})
    )
    assert sim.trace.columns is not None and sim.trace.columns.as_mapping() == columns


def test_trace_path_resolves_against_the_manifest_folder(tmp_path: Path) -> None:
    manifest = {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Simulation",
        "metadata": {"name": "s"},
        "spec": spec(),
    }
    sim = Simulation.model_validate(manifest)
    assert sim.trace_path(tmp_path) == tmp_path / "jobs.csv"
    manifest["spec"] = spec(trace={"path": str(tmp_path / "abs.csv"), "format": "csv"})
    assert (
        Simulation.model_validate(manifest).trace_path(Path("/elsewhere")) == tmp_path / "abs.csv"
    )
