"""The one error tree of Shoal; every message is meant for the user.

::

    ShoalError                    shoal_error        HTTP 500  exit 1  never
    ├── InputError                invalid_input      HTTP 400  exit 2  never   (nothing applied)
    │   ├── ManifestError         invalid_manifest   a manifest is malformed or fails validation
    │   ├── TraceError            invalid_trace      a trace is missing, unreadable or lacks columns
    │   ├── UnknownReferenceError unknown_reference  a manifest names something that does not exist
    │   ├── PayloadTooLarge       payload_too_large  HTTP 413: a request body over the limit
    │   └── NotFoundError         not_found          HTTP 404: no such object (or not the caller's)
    ├── Unauthorized              unauthorized       HTTP 401: missing or unknown token
    ├── Forbidden                 forbidden          HTTP 403: a token that may not do this
    ├── ConflictError             conflict           HTTP 409  after   changed since read: retry
    │   ├── AlreadyExistsError    already_exists     HTTP 409  never   a live object has the name
    │   ├── ImmutableError        immutable          HTTP 409  never   a live job's spec may not change
    │   └── InUseError            in_use             HTTP 409  never   still used: delete its users first
    ├── UnavailableError          unavailable        HTTP 503  after   temporary: retry later
    │   ├── StoreBusyError        store_busy         the state store stayed locked too long
    │   └── UnreachableError      unreachable        the control plane does not answer
    └── InternalError             internal           HTTP 500: a bug in Shoal, cause chained

Each class has a stable ``code`` that survives a trip across the API (the
client maps it back to the same class), an HTTP status, an exit code for the
CLI and a retry decision: ``retry == "after"`` means the same request may
succeed later (after ``retry_after_s`` seconds when known); ``"never"`` means
it fails again until the input changes.  Callers catch by type
(``except ConflictError``), never by comparing codes.  Third-party
exceptions are wrapped with ``raise ... from exc`` so that ``--debug`` still
shows the root cause.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Retry = Literal["never", "after"]


class ShoalError(Exception):
    """Base of every error Shoal raises on purpose."""

    code: ClassVar[str] = "shoal_error"
    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 500
    retry: ClassVar[Retry] = "never"
    default_retry_after_s: ClassVar[float | None] = None

    def __init__(
        self, message: str, *, hint: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.retry_after_s = (
            retry_after_s if retry_after_s is not None else self.default_retry_after_s
        )

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed later, unchanged."""
        return self.retry == "after"

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class InputError(ShoalError):
    """The user's input is wrong; nothing was applied."""

    code = "invalid_input"
    exit_code = 2
    http_status = 400


class ManifestError(InputError):
    """A manifest is malformed or does not validate."""

    code = "invalid_manifest"


class TraceError(InputError):
    """A trace cannot be read or does not have the expected columns."""

    code = "invalid_trace"


class UnknownReferenceError(InputError):
    """A manifest refers to an object (tenant, flavor, policy) that does not exist."""

    code = "unknown_reference"


class PayloadTooLarge(InputError):
    """A request body larger than the control plane accepts."""

    code = "payload_too_large"
    http_status = 413


class NotFoundError(InputError):
    """The named object does not exist (or is not visible to the caller)."""

    code = "not_found"
    http_status = 404


class Unauthorized(ShoalError):
    """No token, or one that Shoal does not know."""

    code = "unauthorized"
    http_status = 401


class Forbidden(ShoalError):
    """A valid token that may not do this (another tenant's job, an admin action)."""

    code = "forbidden"
    http_status = 403


class ConflictError(ShoalError):
    """The object changed since it was read; read it again and retry."""

    code = "conflict"
    http_status = 409
    retry: ClassVar[Retry] = "after"


class AlreadyExistsError(ConflictError):
    """A live object already has that name; retrying the same request fails again."""

    code = "already_exists"
    exit_code = 2
    retry: ClassVar[Retry] = "never"


class ImmutableError(ConflictError):
    """A live object whose spec may not change (jobs): delete it first."""

    code = "immutable"
    exit_code = 2
    retry: ClassVar[Retry] = "never"


class InUseError(ConflictError):
    """An object still in use (a tenant with live jobs, a node pool running pods)
    cannot be deleted; the message names its users and what to do first."""

    code = "in_use"
    retry: ClassVar[Retry] = "never"


class UnavailableError(ShoalError):
    """Temporarily unable to answer; the same request may succeed later."""

    code = "unavailable"
    http_status = 503
    retry: ClassVar[Retry] = "after"
    default_retry_after_s = 1.0


class StoreBusyError(UnavailableError):
    """The state store stayed locked by another writer for too long."""

    code = "store_busy"


class UnreachableError(UnavailableError):
    """The control plane does not answer (not started, stopped, or unreachable)."""

    code = "unreachable"


class InternalError(ShoalError):
    """Something Shoal should have prevented; please report it."""

    code = "internal"


def error_classes() -> list[type[ShoalError]]:
    """Every class of the tree defined in this module, base first (walks subclasses)."""
    found: list[type[ShoalError]] = []
    pending: list[type[ShoalError]] = [ShoalError]
    while pending:
        cls = pending.pop(0)
        if cls.__module__ == __name__ and cls not in found:
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
