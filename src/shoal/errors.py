"""The one error tree of Shoal; every message is meant for the user.

::

    ShoalError                  (code, exit_code=1)
    ├── InputError              bad user input: exit code 2, never half-applied
    │   ├── ManifestError       a manifest is malformed or fails validation
    │   ├── TraceError          a trace file is missing, unreadable or lacks columns
    │   ├── UnknownReferenceError  a manifest names something that does not exist
    │   └── NotFoundError       the named object does not exist (HTTP 404)
    ├── Unauthorized            missing or unknown token (HTTP 401)
    ├── Forbidden               a token that may not do this (HTTP 403)
    ├── ConflictError           changed or already exists (HTTP 409)
    └── InternalError           a bug in Shoal: reported with the cause chained

Each error carries a stable ``code`` so that it survives a trip across the API
and the CLI can print one clear line.  Third-party exceptions are wrapped with
``raise ... from exc`` so that ``--debug`` still shows the root cause.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base of every error Shoal raises on purpose."""

    code = "shoal_error"
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class InputError(ShoalError):
    """The user's input is wrong; nothing was applied."""

    code = "invalid_input"
    exit_code = 2


class ManifestError(InputError):
    """A manifest is malformed or does not validate."""

    code = "invalid_manifest"


class TraceError(InputError):
    """A trace cannot be read or does not have the expected columns."""

    code = "invalid_trace"


class UnknownReferenceError(InputError):
    """A manifest refers to an object (tenant, flavor, policy) that does not exist."""

    code = "unknown_reference"


class InternalError(ShoalError):
    """Something Shoal should have prevented; please report it."""

    code = "internal"


class Unauthorized(ShoalError):
    """No token, or one that Shoal does not know."""

    code = "unauthorized"


class Forbidden(ShoalError):
    """A valid token that may not do this (another tenant's job, an admin action)."""

    code = "forbidden"


class NotFoundError(InputError):
    """The named object does not exist (or is not visible to the caller)."""

    code = "not_found"


class ConflictError(ShoalError):
    """The object changed or exists already; read it again and retry."""

    code = "conflict"
