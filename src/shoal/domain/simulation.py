"""The Simulation manifest: a cluster, tenants, a job trace, a mode and what to compare.

Pure pydantic, no I/O: the trace path stays a string until ``trace_path`` joins
it to the manifest's folder.  Policy names are only checked to be non-empty
strings here, because ``domain`` may not import ``policy``; the simulator
checks them against the registered scorers.

Cross-field rules (format vs. columns, mode vs. sections) are reported on the
offending field, not on ``spec``, so a manifest error points at the right line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from shoal.domain.base import Metadata, Name, Spec
from shoal.domain.nodes import InlineNodePool
from shoal.domain.tenant import InlineTenant

_SEED_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_SEEDS_HINT = "expected a seed (42), a list of seeds ([42, 43]) or a range ('42-51')"
MAX_SEEDS = 10_000


def _one_seed_item(item: object) -> list[int]:
    if isinstance(item, bool):
        raise ValueError(f"{_SEEDS_HINT}, got {item!r}")
    if isinstance(item, int):
        if item < 0:
            raise ValueError(f"a seed must not be negative, got {item}")
        return [item]
    if isinstance(item, str):
        text = item.strip()
        if text.isdigit():
            return [int(text)]
        match = _SEED_RANGE.match(text)
        if match is None:
            raise ValueError(f"{_SEEDS_HINT}, got {item!r}")
        first, last = int(match.group(1)), int(match.group(2))
        if first > last:
            raise ValueError(f"seed range {item!r} runs backwards; write '{last}-{first}'")
        if last - first >= MAX_SEEDS:
            raise ValueError(f"seed range {item!r} has more than {MAX_SEEDS} seeds")
        return list(range(first, last + 1))
    raise ValueError(f"{_SEEDS_HINT}, got {item!r}")


def _parse_seeds(value: object) -> list[int]:
    """``42`` -> [42]; ``"42-51"`` -> [42..51]; a list may mix seeds and ranges."""
    items = value if isinstance(value, list | tuple) else [value]
    seeds = [seed for item in items for seed in _one_seed_item(item)]
    if not seeds:
        raise ValueError(f"{_SEEDS_HINT}, got an empty list")
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must not repeat")
    return seeds


Seeds = Annotated[list[int], BeforeValidator(_parse_seeds)]


def _reject(loc: tuple[str | int, ...], message: str, value: object) -> ValidationError:
    """A validation error located on one field, for rules checked across fields."""
    error = PydanticCustomError("inconsistent", message)
    return ValidationError.from_exception_data(
        "Simulation", [InitErrorDetails(type=error, loc=loc, input=value)]
    )


class ClusterSpec(Spec):
    """The simulated nodes: node pools, or the openb trace's own node list."""

    node_pools: list[InlineNodePool] = Field(
        default_factory=list, description="NodePool specs, each with a name"
    )
    nodes_from_trace: bool = Field(
        default=False, description="openb only: use the trace's own GPU node list"
    )

    @field_validator("node_pools")
    @classmethod
    def _unique_pools(cls, pools: list[InlineNodePool]) -> list[InlineNodePool]:
        names = [pool.name for pool in pools]
        if len(set(names)) != len(names):
            raise ValueError("node pool names must be unique")
        return pools


class TenantsFromTrace(Spec):
    """One tenant per distinct tenant in the trace, all in one cohort."""

    cohort: Name = Field(default="shared", description="the cohort of every tenant")
    gpu_quota: Literal["equal", "none"] = Field(
        default="equal", description="equal: each tenant gets an equal share of every GPU model"
    )


class TraceColumns(Spec):
    """Logical column -> the trace's header name (csv traces only)."""

    name: str | None = Field(default=None, description="job name")
    submit_time: str | None = Field(
        default=None, description="when the job is submitted: seconds or a timestamp"
    )
    duration: str | None = Field(
        default=None, description="run time, in seconds unless units.duration says otherwise"
    )
    start_time: str | None = Field(
        default=None, description="when the job started (for endTime); unset: its submit time"
    )
    end_time: str | None = Field(
        default=None, description="when the job ended: duration = endTime - startTime"
    )
    gpus: str | None = Field(
        default=None,
        description="GPUs per worker (with gpusPerWorker: the job's total); a value in (0, 1) "
        "is a share of one GPU",
    )
    gpu_milli: str | None = Field(
        default=None, description="share of each GPU in thousandths (0-1000)"
    )
    workers: str | None = Field(default=None, description="pods per job, a gang")
    gpus_per_worker: str | None = Field(
        default=None, description="GPUs of each worker; gpus, if given, must be workers x this"
    )
    cpu: str | None = Field(
        default=None, description="CPU per worker, in cores unless units.cpu says otherwise"
    )
    memory: str | None = Field(
        default=None, description="memory per worker, in MiB unless units.memory says otherwise"
    )
    tenant: str | None = Field(default=None, description="the team that owns the job")
    priority: str | None = Field(default=None, description="an integer or a class name")
    gpu_model: str | None = Field(
        default=None, description="allowed GPU models, |-separated"
    )
    checkpoint_interval: str | None = Field(
        default=None, description="seconds between checkpoints"
    )
    arrival_time: str | None = Field(
        default=None, description="serve mode: when the request arrives, seconds or a timestamp"
    )
    input_tokens: str | None = Field(
        default=None, description="serve mode: the request's prompt tokens"
    )
    output_tokens: str | None = Field(
        default=None, description="serve mode: the tokens the request generates"
    )

    def as_mapping(self) -> dict[str, str]:
        """camelCase logical name -> header name, for the columns that are mapped."""
        return self.model_dump(by_alias=True, exclude_none=True)


GpuUnit = Literal["count", "percent"]
TimeUnit = Literal["seconds", "milliseconds", "minutes", "hours"]


class TraceUnits(Spec):
    """The unit a csv trace writes a column in, by logical column; unset: the first listed."""

    gpus: GpuUnit | None = Field(default=None, description="percent: 100 is one GPU")
    gpus_per_worker: GpuUnit | None = Field(default=None, description="percent: 100 is one GPU")
    cpu: Literal["cores", "millicores", "percent"] | None = Field(
        default=None, description="percent: 100 is one core"
    )
    memory: Literal["MiB", "GiB", "MB", "GB"] | None = Field(
        default=None, description="MB and GB are powers of 10, MiB and GiB of 2"
    )
    duration: TimeUnit | None = Field(default=None, description="run time")
    checkpoint_interval: TimeUnit | None = Field(
        default=None, description="time between checkpoints"
    )
    arrival_time: TimeUnit | None = Field(
        default=None, description="serve mode: arrival times written as numbers"
    )

    def as_mapping(self) -> dict[str, str]:
        """camelCase logical name -> unit, for the columns that name one."""
        return self.model_dump(by_alias=True, exclude_none=True)


_CSV_ONLY = (
    ("columns", "columns"),
    ("units", "units"),
    ("time_format", "timeFormat"),
    ("missing_duration", "missingDuration"),
    ("duplicates", "duplicates"),
    ("split", "split"),
)


class TraceSpec(Spec):
    """The job trace: a CSV file (see docs/trace-format.md) or an openb folder."""

    path: str = Field(min_length=1, description="relative to the manifest's folder")
    format: Literal["openb", "csv"] = Field(
        description="csv: one row per job; openb: the Alibaba openb trace folder"
    )
    workload: str = Field(default="default", min_length=1, description="openb_pod_list_<name>")
    columns: TraceColumns | None = None
    time_format: Literal["auto", "seconds", "timestamp"] = Field(
        default="auto", description="how submit times are written (csv traces)"
    )
    limit: int | None = Field(
        default=None, ge=1, description="csv: the first N jobs by submit time; openb: N pods"
    )
    units: TraceUnits | None = Field(
        default=None, description="the unit of a column, when not the default (csv traces)"
    )
    missing_duration: Literal["error", "runUntilEnd", "drop"] = Field(
        default="error",
        description="a job without a duration: an error, runs until the replay's end (needs "
        "replay.horizonSeconds in replay mode), or is left out (csv traces)",
    )
    duplicates: Literal["error", "first", "last", "merge"] = Field(
        default="error",
        description="rows with the same job name: an error, keep the first or last row, or "
        "merge them into one job with the workers of every row (csv traces)",
    )
    split: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: a worker asking for more GPUs than the largest node becomes a gang "
        "of equal node-sized workers; off: it stays as written (csv traces)",
    )

    @model_validator(mode="after")
    def _options_match_format(self) -> TraceSpec:
        given = self.model_fields_set
        if self.format == "openb":
            for field, alias in _CSV_ONLY:
                if field in given:
                    raise _reject((alias,), f"{alias} is for csv traces; this trace is openb", "")
        elif "workload" in given:
            raise _reject(("workload",), "workload is for openb traces; this trace is csv", "")
        return self

    def resolved_path(self, manifest_dir: Path) -> Path:
        """The trace's path; a relative one is taken from the manifest's folder."""
        path = Path(self.path)
        return path if path.is_absolute() else manifest_dir / path


class FillSpec(Spec):
    """Fill mode: pods arrive and never leave until their GPU requests reach the target."""

    target_gpu_share: float = Field(
        default=1.3, gt=0, description="arrived GPU requests as a share of GPU capacity"
    )


class Failure(Spec):
    """A node (or every node of a pool) goes down at ``atSeconds``."""

    at_seconds: float = Field(ge=0, description="simulated time of the failure")
    node: str | None = Field(default=None, description="a node name, e.g. a100-001")
    pool: str | None = Field(default=None, description="a pool name: all of its nodes")
    down_for_seconds: float | None = Field(default=None, gt=0, description="none: stays down")

    @model_validator(mode="after")
    def _one_target(self) -> Failure:
        if (self.node is None) == (self.pool is None):
            raise ValueError("a failure names exactly one of node or pool")
        return self


class ReplaySpec(Spec):
    """Replay mode: jobs arrive, queue, run and finish on a virtual clock."""

    checkpoint_interval_seconds: float | None = Field(
        default=None, gt=0, description="for jobs whose trace row gives none"
    )
    preemption: bool = Field(default=True, description="false: nothing is ever preempted")
    horizon_seconds: float | None = Field(
        default=None, gt=0, description="stop at this simulated time; unset: when all is done"
    )
    failures: list[Failure] = Field(default_factory=list, description="node failures")
    grace_period_seconds: float = Field(
        default=10.0, ge=0,
        description="a victim's pods are killed this long after SIGTERM (as `--grace` live)",
    )
    stop_seconds: float = Field(
        default=0.0, ge=0,
        description="how long a victim's pods take to stop after SIGTERM (capped by the grace "
        "period); its GPUs stay held until then",
    )


SERVE_COLUMNS = ("arrivalTime", "inputTokens", "outputTokens")
_JOB_ONLY = (
    ("missing_duration", "missingDuration"),
    ("duplicates", "duplicates"),
    ("split", "split"),
)


class ServiceTimeSpec(Spec):
    """How long one request keeps a replica slot: fixed + per-token terms."""

    fixed_seconds: float = Field(default=0.0, ge=0, description="per request")
    per_input_token_seconds: float = Field(
        default=0.0, ge=0, description="per prompt token (prefill); needs columns.inputTokens"
    )
    per_output_token_seconds: float = Field(
        default=0.0, ge=0, description="per generated token (decode); needs columns.outputTokens"
    )

    @model_validator(mode="after")
    def _takes_time(self) -> ServiceTimeSpec:
        if not (self.fixed_seconds or self.per_input_token_seconds or self.per_output_token_seconds):
            raise ValueError("a request must take some time: give fixedSeconds or a per-token term")
        return self


class SloSpec(Spec):
    """The latency objective: ``percentile`` % of requests within ``latencySeconds``."""

    latency_seconds: float = Field(gt=0, description="the latency bound")
    percentile: float = Field(
        default=95.0, gt=0, lt=100, description="the share of requests that must meet it, in %"
    )
    measure: Literal["response", "firstToken"] = Field(
        default="response",
        description="response: arrival to last token; firstToken: arrival to the first token "
        "(waiting + fixed + prompt terms)",
    )


class ServeSpec(Spec):
    """Serve mode: request arrivals against autoscaled replicas of one service."""

    service_time: ServiceTimeSpec = Field(description="the service-time model")
    concurrency: int = Field(default=1, ge=1, description="requests one replica serves at once")
    cold_start_seconds: float = Field(
        default=5.0, ge=0, description="from ordering a replica to its serving"
    )
    initial_replicas: int = Field(default=1, ge=0, description="warm replicas at the start")
    min_replicas: int = Field(default=0, ge=0, description="the autoscaler's lower bound")
    max_replicas: int | None = Field(
        default=None, ge=1, description="the autoscaler's upper bound; unset: none"
    )
    slo: SloSpec = Field(description="the latency objective the policies are judged on")

    @model_validator(mode="after")
    def _bounds(self) -> ServeSpec:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise _reject(("maxReplicas",), "maxReplicas is below minReplicas", self.max_replicas)
        return self


class SimulationSpec(Spec):
    """A cluster, tenants, a job trace, a mode and the policies to compare."""

    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    tenants: list[InlineTenant] = Field(
        default_factory=list, description="Tenant specs, each with a name"
    )
    tenants_from_trace: TenantsFromTrace | None = Field(
        default=None, description="the default in replay mode when no tenants are given"
    )
    trace: TraceSpec
    mode: Literal["fill", "replay", "serve"] = Field(
        description="fill: the FGD paper's experiment (nothing leaves); replay: a job trace "
        "over time with quotas and preemption; serve: request arrivals against an autoscaled "
        "service"
    )
    policies: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        description="placement policies to compare (shoal policies lists them); serve mode: "
        "autoscaling policies (kpa, hpa, shoal)",
    )
    seeds: Seeds = Field(
        default_factory=lambda: [42],
        description="a seed (42), a range ('42-51') or a list of seeds and ranges",
    )
    fill: FillSpec | None = Field(default=None, description="mode fill only")
    replay: ReplaySpec | None = Field(default=None, description="mode replay only")
    serve: ServeSpec | None = Field(default=None, description="mode serve only")

    @model_validator(mode="before")
    @classmethod
    def _replay_defaults_to_trace_tenants(cls, data: Any) -> Any:
        # A replay needs tenants; with none written, take them from the trace.
        if not isinstance(data, dict) or data.get("mode") != "replay":
            return data
        keys = ("tenants", "tenantsFromTrace", "tenants_from_trace")
        if all(data.get(key) in (None, []) for key in keys):
            return {**data, "tenantsFromTrace": {}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SimulationSpec:
        if self.mode == "serve":
            return self._consistent_serve()
        if self.serve is not None:
            raise _reject(("serve",), f"serve settings given, but mode is {self.mode}", {})
        mapped = self.trace.columns.as_mapping() if self.trace.columns else {}
        for key in SERVE_COLUMNS:
            if key in mapped:
                raise _reject(
                    ("trace", "columns", key), f"{key} is for serve mode; mode is {self.mode}", ""
                )
        cluster, trace = self.cluster, self.trace
        if cluster.nodes_from_trace and trace.format != "openb":
            raise _reject(
                ("cluster", "nodesFromTrace"), "only an openb trace has a node list", True
            )
        if not cluster.node_pools and not cluster.nodes_from_trace:
            raise _reject(
                ("cluster",), "no nodes: give nodePools or, for openb, nodesFromTrace: true", {}
            )
        if self.tenants and self.tenants_from_trace is not None:
            raise _reject(("tenantsFromTrace",), "give tenants or tenantsFromTrace, not both", {})
        names = [tenant.name for tenant in self.tenants]
        if len(set(names)) != len(names):
            raise _reject(("tenants",), "tenant names must be unique", names)
        other = "replay" if self.mode == "fill" else "fill"
        if getattr(self, other) is not None:
            raise _reject((other,), f"{other} settings given, but mode is {self.mode}", {})
        self._check_failures()
        return self

    def _consistent_serve(self) -> SimulationSpec:
        trace = self.trace
        if self.serve is None:
            raise _reject(("serve",), "mode serve needs a serve section (serviceTime, slo)", {})
        for other in ("fill", "replay", "tenants_from_trace"):
            if getattr(self, other) is not None:
                alias = "tenantsFromTrace" if other == "tenants_from_trace" else other
                raise _reject((alias,), f"{alias} is not used in serve mode", {})
        if self.tenants or self.cluster.node_pools or self.cluster.nodes_from_trace:
            where = "tenants" if self.tenants else "cluster"
            raise _reject((where,), f"{where} is not used in serve mode", {})
        if trace.format != "csv":
            raise _reject(("trace", "format"), "serve mode reads a csv request trace", trace.format)
        for field, alias in _JOB_ONLY:
            if field in trace.model_fields_set:
                raise _reject(("trace", alias), f"{alias} is for job traces, not serve mode", "")
        mapped = trace.columns.as_mapping() if trace.columns else {}
        jobs = [key for key in mapped if key not in SERVE_COLUMNS]
        if jobs:
            raise _reject(
                ("trace", "columns", jobs[0]),
                f"{jobs[0]} is a job column; serve mode maps {', '.join(SERVE_COLUMNS)}",
                "",
            )
        units = trace.units.as_mapping() if trace.units else {}
        if set(units) - {"arrivalTime"}:
            bad = sorted(set(units) - {"arrivalTime"})[0]
            raise _reject(("trace", "units", bad), "serve mode only has units.arrivalTime", "")
        time = self.serve.service_time
        needs = (("inputTokens", time.per_input_token_seconds),
                 ("outputTokens", time.per_output_token_seconds))
        for key, per_token in needs:
            if per_token and key not in mapped:
                raise _reject(
                    ("trace", "columns", key),
                    f"serviceTime has a per-token term for {key}: map the column that holds them",
                    "",
                )
        return self

    def _check_failures(self) -> None:
        if self.replay is None or self.cluster.nodes_from_trace:
            return  # trace node pools are named after GPU models; checked at load time
        pools = {pool.name for pool in self.cluster.node_pools}
        for index, failure in enumerate(self.replay.failures):
            if failure.pool is not None and failure.pool not in pools:
                known = ", ".join(sorted(pools))
                raise _reject(
                    ("replay", "failures", index, "pool"),
                    f"no node pool named {failure.pool!r}; pools: {known}",
                    failure.pool,
                )

    @property
    def fill_settings(self) -> FillSpec:
        return self.fill or FillSpec()

    @property
    def replay_settings(self) -> ReplaySpec:
        return self.replay or ReplaySpec()


class Simulation(Spec):
    """A simulation scenario for ``shoal sim``: runs every policy on every seed."""

    api_version: Literal["shoal.dev/v1alpha1"]
    kind: Literal["Simulation"]
    metadata: Metadata
    spec: SimulationSpec

    def trace_path(self, manifest_dir: Path) -> Path:
        """The trace file (or openb folder), relative paths taken from ``manifest_dir``."""
        return self.spec.trace.resolved_path(manifest_dir)
