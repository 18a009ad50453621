"""Base model for user-facing specs: camelCase keys, unknown keys rejected."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_VERSION = "shoal.dev/v1alpha1"

_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
Name = Annotated[str, Field(pattern=_NAME, min_length=1, max_length=253)]
"""A DNS-1123 name, as Kubernetes requires for object names."""


class Spec(BaseModel):
    """Strict, immutable model: a typo'd key is an error, never a silent default."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        str_strip_whitespace=True,
    )


class Metadata(Spec):
    """Name, labels and annotations, as on any Kubernetes object."""

    name: Name = Field(description="the object's name, unique among objects of its kind")
    labels: dict[str, str] = Field(default_factory=dict, description="free-form labels")
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="free-form notes; Shoal reads a few shoal.dev/ keys (see Annotations)",
    )


def is_name(text: str) -> bool:
    return re.match(_NAME, text) is not None
