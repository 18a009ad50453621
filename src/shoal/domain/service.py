"""Inference services: a model served by autoscaled replicas behind a router.

An ``InferenceService`` names the model (a file of the tenant's, or what a
TrainingJob wrote to its checkpoint folder), the framework that loads it, what
one replica needs, how many replicas may run, how they scale, and how a new
model version is rolled out (canary share, rollback thresholds).  Each
replica speaks the Open Inference Protocol v2; the tensor datatypes and the
framework names are defined here so the replica server and the manifests
agree on them.

Pure pydantic, no I/O: paths stay strings.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from shoal.domain.base import Metadata, Name, Spec
from shoal.domain.job import PodResources

DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
)
"""The tensor datatypes of the Open Inference Protocol v2."""

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]
Framework = Literal["sklearn", "pytorch", "onnx", "embedding"]
FRAMEWORKS: tuple[Framework, ...] = ("sklearn", "pytorch", "onnx", "embedding")

MAX_DIMENSIONS = 16
"""Most dimensions a declared tensor may have."""
MAX_REPLICAS = 1000
"""Most replicas one service may ask for."""

_ENTRY_POINT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_TENSOR_NAME = r"^[A-Za-z0-9_.:/-]+$"


def _reject(loc: tuple[str | int, ...], message: str, value: object) -> ValidationError:
    """A validation error located on one field, for rules checked across fields."""
    error = PydanticCustomError("inconsistent", message)
    return ValidationError.from_exception_data(
        "InferenceService", [InitErrorDetails(type=error, loc=loc, input=value)]
    )


class FromTrainingJob(Spec):
    """A file that a TrainingJob of the same tenant wrote to its checkpoint folder."""

    training_job: Name = Field(description="the TrainingJob's name (same tenant)")
    path: str = Field(
        min_length=1, max_length=1024,
        description="the file's path inside the job's checkpoint folder, e.g. model.joblib",
    )

    @field_validator("path")
    @classmethod
    def _inside_the_folder(cls, value: str) -> str:
        # The file must be the job's own: no way out of its checkpoint folder.
        if value.startswith("/") or ".." in value.split("/") or "\0" in value:
            raise ValueError(
                f"expected a relative path inside the job's checkpoint folder, got {value!r}"
            )
        return value


class ModelSource(Spec):
    """Where the model is: a local ``path``, or ``from`` a TrainingJob's output."""

    path: str | None = Field(
        default=None, min_length=1, max_length=4096,
        description="a model file (or folder, for embedding) of the tenant's",
    )
    from_: FromTrainingJob | None = Field(
        default=None, alias="from",
        description="the artifact a TrainingJob wrote: {trainingJob, path}",
    )
    entry_point: str | None = Field(
        default=None,
        description="pytorch only: 'module:callable' returning the nn.Module into which the "
        "file's state dict is loaded; unset: the file is TorchScript",
    )
    version: str = Field(
        default="1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
        description="the model version shown on the protocol (GET /v2/models/NAME)",
    )

    @field_validator("path")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\0" in value:
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("entry_point")
    @classmethod
    def _module_callable(cls, value: str | None) -> str | None:
        if value is not None and not _ENTRY_POINT.match(value):
            raise ValueError(f"expected 'module:callable' (e.g. mynet:build), got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if self.path is not None and self.from_ is not None:
            raise ValueError("expected one of path or from, not both")
        return self


class TensorSpec(Spec):
    """One input or output tensor as the model metadata shows it."""

    name: str = Field(min_length=1, max_length=256, pattern=_TENSOR_NAME,
                      description="the tensor's name in requests and responses")
    datatype: Datatype = Field(description="an Open Inference Protocol datatype")
    shape: list[int] = Field(
        description="dimensions (at most 16); -1 is a dimension of any size (e.g. the "
        "batch); [] is a scalar",
    )

    @field_validator("shape")
    @classmethod
    def _dimensions(cls, value: list[int]) -> list[int]:
        if len(value) > MAX_DIMENSIONS:
            raise ValueError(f"at most {MAX_DIMENSIONS} dimensions, got {len(value)}")
        if any(dim < -1 for dim in value):
            raise ValueError(f"a dimension is a size >= 0 or -1 (any size), got {value}")
        return value


class Replicas(Spec):
    """How many replicas may run; ``min: 0`` lets the service scale to zero when idle."""

    min: int = Field(default=1, ge=0, le=MAX_REPLICAS, description="fewest replicas")
    max: int = Field(default=1, ge=1, le=MAX_REPLICAS, description="most replicas")

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) cannot exceed max ({self.max})")
        return self


class Autoscaling(Spec):
    """Which policy sizes the service, on which metric, towards which target."""

    policy: Literal["kpa", "hpa", "shoal"] = Field(
        default="kpa",
        description="kpa: Knative's autoscaler; hpa: Kubernetes' HPA v2; shoal: Shoal's "
        "SLO-driven policy (see docs/serving.md)",
    )
    metric: Literal["concurrency", "rps", "latency"] = Field(
        default="concurrency",
        description="concurrency: in-flight requests per replica; rps: requests per second "
        "per replica; latency: the p95 latency (needs sloP95Ms)",
    )
    target: float | None = Field(
        default=None, gt=0,
        description="the metric's target per replica; unset: the policy's default",
    )
    slo_p95_ms: float | None = Field(
        default=None, gt=0, description="p95 latency objective in milliseconds",
    )

    @model_validator(mode="after")
    def _latency_needs_an_slo(self) -> Autoscaling:
        if self.metric == "latency" and self.slo_p95_ms is None:
            raise ValueError("metric latency needs sloP95Ms, the p95 latency to keep under")
        if self.metric == "latency" and self.policy != "shoal":
            raise ValueError(f"metric latency is for policy shoal (policy {self.policy} scales "
                             "on concurrency or rps)")
        return self


class Canary(Spec):
    """A new model version first gets this share of the traffic."""

    traffic_percent: int = Field(
        default=10, ge=0, le=100,
        description="percent of requests sent to the new revision while it is a canary",
    )


class Rollback(Spec):
    """When a canary is rolled back (a regression) or promoted (a success window passed)."""

    error_rate_delta: float = Field(
        default=0.05, ge=0, le=1,
        description="roll back when the canary's error rate exceeds the stable revision's "
        "by more than this (0.05: five percentage points)",
    )
    latency_ratio: float = Field(
        default=1.5, ge=1,
        description="roll back when the canary's p95 latency exceeds this times the stable "
        "revision's",
    )
    window_seconds: float = Field(
        default=60, gt=0, description="the window over which the two revisions are compared",
    )
    success_window_seconds: float = Field(
        default=300, gt=0,
        description="promote the canary after this long without a regression",
    )
    min_requests: int = Field(
        default=20, ge=1,
        description="fewest canary requests in a window before it is judged",
    )


class InferenceServiceSpec(Spec):
    """What is served, by whom, on what resources, and how it scales and rolls out."""

    tenant: Name = Field(description="the tenant whose quota the replicas use")
    framework: Framework = Field(
        description="sklearn: a joblib/pickle file (predict, predict_proba); pytorch: "
        "TorchScript, or a state dict with model.entryPoint; onnx: run by onnxruntime; "
        "embedding: the packaged text-embedding model (all-MiniLM-L6-v2)",
    )
    model: ModelSource = Field(
        default_factory=ModelSource,
        description="where the model file is; framework embedding without path or from: the "
        "packaged all-MiniLM-L6-v2",
    )
    inputs: list[TensorSpec] | None = Field(
        default=None, min_length=1,
        description="input tensors; unset: what the model says (ONNX, scikit-learn, "
        "embedding) or one FP32 tensor 'input' of shape [-1, -1] (pytorch)",
    )
    outputs: list[TensorSpec] | None = Field(
        default=None, min_length=1,
        description="output tensors; unset: what the model says, or one FP32 tensor "
        "'output' (pytorch)",
    )
    resources: PodResources = Field(
        default_factory=PodResources,
        description="what one replica needs: cpu, memory, gpu (whole or a fraction); "
        "counted against the tenant's quota like any pod",
    )
    replicas: Replicas = Field(default_factory=Replicas)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    canary: Canary | None = Field(
        default=None,
        description="unset: a new model version takes all traffic once ready",
    )
    rollback: Rollback = Field(default_factory=Rollback)

    @model_validator(mode="after")
    def _framework_fits(self) -> InferenceServiceSpec:
        if self.model.path is None and self.model.from_ is None and self.framework != "embedding":
            raise _reject(("model",), "expected path or from (only framework embedding has a "
                          "packaged model)", None)
        if self.model.entry_point is not None and self.framework != "pytorch":
            raise _reject(
                ("model", "entryPoint"),
                f"an entry point is for framework pytorch (state dicts), not {self.framework}",
                self.model.entry_point,
            )
        for field, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [tensor.name for tensor in tensors or ()]
            for index, name in enumerate(names):
                if name in names[:index]:
                    raise _reject((field, index, "name"), f"tensor {name!r} is listed twice", name)
        return self


class InferenceService(Spec):
    """A model served over the Open Inference Protocol v2 by autoscaled replicas."""

    api_version: Literal["shoal.dev/v1alpha1"]
    kind: Literal["InferenceService"]
    metadata: Metadata
    spec: InferenceServiceSpec


REPLICA_MODULE = "shoal.serving.replica"
"""The module a runtime runs (``python -m``) for each replica."""


def replica_args(
    name: str, spec: InferenceServiceSpec, model_path: str | None, *, port: int = 0,
    ready_file: str | None = None, host: str = "127.0.0.1", listen_fd: str | None = None,
) -> list[str]:
    """The arguments of ``python -m shoal.serving.replica`` for one replica of ``spec``.

    ``model_path`` is the file the runtime resolved (``model.path``, or the
    TrainingJob's checkpoint folder joined with ``model.from.path``); None
    serves the packaged embedding model.  ``listen_fd`` (a number, or "env")
    hands the replica a listening socket instead of ``host`` and ``port``.
    """
    args = ["--framework", spec.framework, "--name", name, "--version", spec.model.version]
    if listen_fd is not None:
        args += ["--listen-fd", listen_fd]
    else:
        args += ["--host", host, "--port", str(port)]
    if model_path is not None:
        args += ["--model", model_path]
    if ready_file is not None:
        args += ["--ready-file", ready_file]
    if spec.model.entry_point is not None:
        args += ["--entry-point", spec.model.entry_point]
    for option, tensors in (("--inputs", spec.inputs), ("--outputs", spec.outputs)):
        if tensors is not None:
            args += [option, json.dumps([t.model_dump() for t in tensors])]
    return args
