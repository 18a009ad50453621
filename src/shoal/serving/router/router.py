"""The router of one inference service: its lifecycle, its routing table and
the forwarding of a request to a replica.

The control plane drives it: ``start()`` binds (port 0 picks a free port;
``url`` reads it back), ``update(revisions)`` gives the revisions with their
traffic weights and ready replicas whenever they change (callable from any
thread), ``stats()`` gives the autoscaler its figures, ``metrics.registry``
goes into ``/metrics``, and ``on_cold`` is called for each request that waits
for a replica of a revision that has none.  Requests to replicas go through
a pool of keep-alive connections (``upstream``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import uvicorn
from pydantic import BaseModel, ConfigDict, Field

from shoal.errors import InputError, NotFoundError, ShoalError, UnavailableError
from shoal.serving.router.activator import ColdCallback, Revision
from shoal.serving.router.balancing import Replica, WeightedSplit
from shoal.serving.router.front import Answer, Front, Target, Verifier, error_answer
from shoal.serving.router.metrics import (
    NO_REVISION,
    STATS_WINDOW_S,
    RevisionStats,
    RouterMetrics,
    StatsSnapshot,
)
from shoal.serving.router.upstream import Response, Upstream, UpstreamError, UpstreamTimeout

_log = logging.getLogger(__name__)

PASSED_RESPONSE_HEADERS = frozenset((b"content-type", b"inference-header-content-length",
                                     b"content-encoding"))
"""Response headers a caller sees from a replica (its own content-length is recomputed)."""
_UPSTREAM = {"server": "/v2", "model": "/v2/models/{model}",
             "ready": "/v2/models/{model}/ready", "infer": "/v2/models/{model}/infer"}
"""A replica's path per action: it serves one revision, so no version is named."""


class ReplicaTimeout(UnavailableError):
    """A replica took the request and did not answer in time."""

    code = "replica_timeout"
    http_status = 504


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _error_parts(message: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    answer = error_answer(UnavailableError(message))
    return answer.body, answer.headers


def _passed(response: Response) -> Answer:
    headers = [(name, value) for name, value in response.headers
               if name in PASSED_RESPONSE_HEADERS]
    return Answer(response.status, response.body, headers)


class RevisionRoute(BaseModel):
    """One revision as the control plane gives it to the router."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    """The revision, and the model version a request may name to reach it."""
    weight: int = Field(ge=0, le=100)
    """Percent of the requests that name no version (relative: 3 and 1 split 75/25)."""
    replicas: tuple[str, ...] = ()
    """Base URLs of its ready replicas (``http://127.0.0.1:8001``); empty: scaled to zero."""
    model: str | None = None
    """The model's name on its replicas (default: the service's name)."""


class RouterLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Largest request body forwarded (413 beyond)."""
    queue_limit: int = Field(default=100, ge=0)
    """Requests the activator holds per revision (503 beyond)."""
    activation_timeout_s: float = Field(default=60.0, gt=0)
    """Longest wait for a replica to become ready (503 after)."""
    connect_timeout_s: float = Field(default=2.0, gt=0)
    response_timeout_s: float = Field(default=300.0, gt=0)
    """Longest wait for a replica's answer once connected (504 after)."""
    max_idle_connections: int = Field(default=256, ge=0)
    """Idle keep-alive connections kept per replica."""
    auth_cache_s: float = Field(default=1.0, ge=0)
    """How long a token's verdict is reused: a revoked token works at most this long."""


class Router:
    """The OIP v2 entry point of one service (see the module's docstring)."""

    def __init__(self, service: str, tenant: str, verifier: Verifier, *,
                 host: str = "127.0.0.1", port: int = 0, limits: RouterLimits | None = None,
                 metrics: RouterMetrics | None = None, on_cold: ColdCallback | None = None,
                 seed: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.service, self.tenant = service, tenant
        self.limits = limits or RouterLimits()
        self.metrics = metrics or RouterMetrics()
        self.on_cold, self.clock = on_cold, clock
        self._host, self._port = host, port
        self._rng = random.Random(seed)
        self._revisions: dict[str, Revision] = {}
        self._split = WeightedSplit({})
        self._unrouted: dict[int, Any] = {}
        self._front = Front(self, verifier, tenant, self.limits.max_body_bytes,
                            self.limits.auth_cache_s, clock)
        self._upstream: Upstream | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._bound: int | None = None  # the port it got: read by other threads as it stops
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve on the running loop; returns once it accepts requests."""
        if self._task is not None:
            raise InputError(f"the router of service {self.service!r} is already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # IPPROTO_TCP said outright: asyncio turns Nagle's algorithm off only on
        # connections whose socket says it (else an answer written in two parts
        # waits ~40 ms for the caller's delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise UnavailableError(f"the router of service {self.service!r} cannot listen on "
                                   f"{self._host}:{self._port}: {exc.strerror or exc}") from exc
        sock.listen(1024)
        sock.setblocking(False)
        limits = self.limits
        self._upstream = Upstream(limits.connect_timeout_s, limits.response_timeout_s,
                                  limits.max_idle_connections)
        config = uvicorn.Config(self._front, lifespan="off", log_level="warning",
                                access_log=False, timeout_keep_alive=30)
        self._server = _QuietServer(config)
        self._socket, self._loop, self._thread = sock, asyncio.get_running_loop(), threading.get_ident()
        self._bound = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.005)  # uvicorn offers no event; the socket already listens
        if self._task.done():
            await self.stop()
            raise UnavailableError(f"the router of service {self.service!r} did not start")

    async def stop(self) -> None:
        """Stop accepting, finish requests in flight, fail the waiting ones, close."""
        for revision in self._revisions.values():
            revision.wake()
        self._revisions, self._split = {}, WeightedSplit({})
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task
        if self._upstream is not None:
            await self._upstream.close()
        if self._socket is not None:
            self._socket.close()
        self._server = self._task = self._upstream = self._socket = None

    @property
    def port(self) -> int:
        if self._bound is None:
            raise InputError(f"the router of service {self.service!r} is not started")
        return self._bound

    @property
    def url(self) -> str:
        """The base URL; the OIP v2 paths are below it (``{url}/v2/models/{service}/infer``)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    # -- the control plane's view -----------------------------------------------------

    def update(self, revisions: Sequence[RevisionRoute]) -> None:
        """Replace the routing table: revisions, weights and ready replicas.

        Safe from any thread (applied on the router's loop).  Revisions left out
        are removed; their waiting requests look again (and get 503 or 404)."""
        names = [r.name for r in revisions]
        if len(set(names)) != len(names):
            raise InputError(f"revisions: names must be unique, got {names}")
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._apply, list(revisions))
        else:
            self._apply(list(revisions))

    def _apply(self, revisions: list[RevisionRoute]) -> None:
        table: dict[str, Revision] = {}
        for route in revisions:
            revision = self._revisions.get(route.name)
            if revision is None:
                stats = RevisionStats(self.metrics, self.service, route.name)
                revision = Revision(route.name, route.model or self.service, stats)
            revision.model = route.model or self.service
            table[route.name] = revision
        gone = [r for name, r in self._revisions.items() if name not in table]
        self._revisions = table
        self._split = WeightedSplit({r.name: r.weight for r in revisions})
        for route in revisions:
            table[route.name].set_replicas(route.replicas)
        for revision in gone:
            revision.wake()

    def stats(self, window_s: float = STATS_WINDOW_S) -> dict[str, StatsSnapshot]:
        """Each revision's figures now (in flight, waiting, arrival rate, p95)."""
        now = self.clock()
        return {name: r.stats.snapshot(now, window_s) for name, r in self._revisions.items()}

    def takes_traffic(self) -> bool:
        """True when a request naming no version has a revision to go to."""
        return bool(self._split.weights)

    @property
    def weights(self) -> dict[str, int]:
        return self._split.weights

    # -- the request path ---------------------------------------------------------------

    async def forward(self, target: Target) -> Answer:
        """Send ``target`` to a replica of its revision (waiting for one if needed)."""
        revision = self._choose(target.version)
        stats, arrived = revision.stats, self.clock()
        stats.arrive(arrived)
        try:
            answer = await self._send(revision, target)
        except ShoalError as exc:
            answer = error_answer(exc)
        except Exception as exc:  # a bug: logged, and a 503 rather than a traceback
            _log.exception("router of service %r failed forwarding", self.service)
            answer = Answer(503, *_error_parts(f"the router failed: {type(exc).__name__}"))
        except BaseException:
            stats.finish(503, self.clock() - arrived, self.clock())
            raise
        return replace(answer, stats=stats)

    def record(self, stats: RevisionStats | None, status: int, seconds: float) -> None:
        """Count one answer (called by the front once it is sent)."""
        if stats is not None:
            stats.finish(status, seconds, self.clock())
            return
        child = self._unrouted.get(status)
        if child is None:
            child = self._unrouted[status] = self.metrics.requests.labels(
                self.service, NO_REVISION, str(status))
        child.inc()

    async def _send(self, revision: Revision, target: Target) -> Answer:
        replica = revision.pick(self._rng) or await self._activate(revision)
        path = _UPSTREAM[target.action].format(model=revision.model)
        if target.query:
            path += "?" + target.query.decode("latin-1")
        upstream = self._upstream
        assert upstream is not None, "forward() before start()"
        for attempt in (1, 2):
            replica.outstanding += 1
            try:
                response = await upstream.request(replica.url, target.method, path,
                                                  target.headers, target.body)
            except UpstreamTimeout as exc:
                raise ReplicaTimeout(f"replica {replica.url} of revision {revision.name!r} did "
                                     f"not answer within {self.limits.response_timeout_s:g}s"
                                     ) from exc
            except UpstreamError as exc:
                # Not sent: any request may go elsewhere.  Sent and then lost: only a
                # read (GET) is safe to repeat.
                if exc.sent and target.method != "GET":
                    raise UnavailableError(
                        f"replica {replica.url} of revision {revision.name!r} failed while "
                        f"answering: {exc}", retry_after_s=1.0) from exc
                failure = exc
            else:
                return _passed(response)
            finally:
                replica.outstanding -= 1
            other = revision.pick(self._rng, exclude=replica) if attempt == 1 else None
            if other is None:
                raise UnavailableError(
                    f"replica {replica.url} of revision {revision.name!r} is unreachable: "
                    f"{failure}", retry_after_s=1.0) from failure
            replica = other
        raise AssertionError("unreachable")  # pragma: no cover

    async def _activate(self, revision: Revision) -> Replica:
        """Wait for a ready replica of ``revision`` (the activator's path)."""
        limit = self.limits.activation_timeout_s
        try:
            async with asyncio.timeout(limit):
                while True:
                    await revision.wait_ready(self.limits.queue_limit, self.service,
                                              self.on_cold)
                    if self._revisions.get(revision.name) is not revision:
                        raise UnavailableError(
                            f"revision {revision.name!r} of service {self.service!r} was "
                            "removed while the request waited for a replica", retry_after_s=1.0)
                    replica = revision.pick(self._rng)
                    if replica is not None:
                        return replica
        except TimeoutError as exc:
            raise UnavailableError(
                f"no replica of revision {revision.name!r} of service {self.service!r} became "
                f"ready within {limit:g}s (scaling from zero)", retry_after_s=1.0) from exc

    def _choose(self, version: str | None) -> Revision:
        if version is not None:
            found = self._revisions.get(version)
            if found is None:
                raise NotFoundError(f"unknown version {version!r} of model {self.service!r}; "
                                    f"known: {', '.join(self._revisions) or 'none'}")
            return found
        name = self._split.next()
        if name is None:
            raise UnavailableError(f"service {self.service!r} has no revision taking traffic",
                                   retry_after_s=1.0)
        return self._revisions[name]


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the router lives inside a control
    plane, whose process decides what Ctrl-C means."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
