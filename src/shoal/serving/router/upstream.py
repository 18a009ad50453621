"""The router's HTTP/1.1 client to replicas: keep-alive connections per
replica over asyncio streams, messages framed by h11.

httpx's pool was the router's bottleneck: its connection pool rescans every
connection on each request (quadratic in the connections in use) and asks
each socket for its readability, so 32 callers got ~300 requests/s through a
router that does ~2,000 with this.  Here a replica's idle connections are a
stack (the warmest first); a connection is reused only after a complete
exchange.  A request that failed on a reused connection before a byte of the
answer came is sent once more on a new connection (the replica had closed
the idle connection: nothing was processed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

READ_CHUNK = 65536


class UpstreamError(Exception):
    """A replica could not be reached or did not answer; ``sent`` says whether
    the request may have reached it (then only a safe request may be repeated)."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class UpstreamTimeout(UpstreamError):
    """The replica took the request and did not answer in time."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Connection:
    __slots__ = ("h11", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class Upstream:
    """Pooled keep-alive connections to any number of replicas."""

    def __init__(self, connect_timeout_s: float, response_timeout_s: float,
                 max_idle_per_replica: int = 256) -> None:
        self.connect_timeout_s, self.response_timeout_s = connect_timeout_s, response_timeout_s
        self.max_idle = max_idle_per_replica
        self._idle: dict[str, list[_Connection]] = {}
        self._hosts: dict[str, tuple[str, int, bytes]] = {}

    async def request(self, base_url: str, method: str, target: str,
                      headers: Sequence[tuple[bytes, bytes]], body: bytes) -> Response:
        """One exchange with the replica at ``base_url``; raises ``UpstreamError``."""
        idle = self._idle.setdefault(base_url, [])
        while idle:
            connection = idle.pop()
            if connection.usable():
                try:
                    return await self._exchange(base_url, connection, method, target, headers, body)
                except _Stale:
                    break  # the replica closed it while idle: try a new connection
            connection.close()
        connection = await self._connect(base_url)
        try:
            return await self._exchange(base_url, connection, method, target, headers, body)
        except _Stale as exc:
            raise UpstreamError(f"{base_url} closed the connection without answering",
                                sent=True) from exc

    async def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def _connect(self, base_url: str) -> _Connection:
        host, port, _ = self._host(base_url)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if port < 0:  # unix:PATH, a socket the control plane bound for the replica
                    reader, writer = await asyncio.open_unix_connection(host, limit=READ_CHUNK)
                else:
                    reader, writer = await asyncio.open_connection(host, port, limit=READ_CHUNK)
        except TimeoutError as exc:
            raise UpstreamError(f"connecting to {base_url} timed out after "
                                f"{self.connect_timeout_s:g}s", sent=False) from exc
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {base_url}: {exc.strerror or exc}",
                                sent=False) from exc
        return _Connection(reader, writer)

    def _host(self, base_url: str) -> tuple[str, int, bytes]:
        found = self._hosts.get(base_url)
        if found is None and base_url.startswith("unix:/"):
            found = self._hosts[base_url] = (base_url[len("unix:"):], -1, b"localhost")
        if found is None:
            parts = urlsplit(base_url)
            if parts.scheme != "http" or not parts.hostname:
                raise UpstreamError(f"{base_url!r}: expected http://HOST:PORT", sent=False)
            port = parts.port or 80
            found = self._hosts[base_url] = (parts.hostname, port, parts.netloc.encode())
        return found

    async def _exchange(self, base_url: str, connection: _Connection, method: str, target: str,
                        headers: Sequence[tuple[bytes, bytes]], body: bytes) -> Response:
        conn = connection.h11
        request = h11.Request(method=method, target=target, headers=[
            (b"host", self._host(base_url)[2]), *headers,
            (b"content-length", str(len(body)).encode())])
        received = False
        try:
            async with asyncio.timeout(self.response_timeout_s):
                data = (conn.send(request) or b"") + (conn.send(h11.Data(data=body)) or b""
                                                       if body else b"")
                connection.writer.write(data + (conn.send(h11.EndOfMessage()) or b""))
                status, answer, chunks = 0, [], []
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await connection.reader.read(READ_CHUNK)
                        if not data and not received:
                            raise _Stale()
                        received = True
                        conn.receive_data(data)
                    elif isinstance(event, h11.Response):
                        status, answer = event.status_code, list(event.headers)
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        raise UpstreamError(f"{base_url} closed the connection mid-answer",
                                            sent=True)
        except (_Stale, UpstreamError):
            connection.close()
            raise
        except TimeoutError as exc:
            connection.close()
            raise UpstreamTimeout(f"{base_url} did not answer within "
                                  f"{self.response_timeout_s:g}s", sent=True) from exc
        except (OSError, h11.ProtocolError) as exc:
            connection.close()
            if not received:
                raise _Stale() from exc
            raise UpstreamError(f"{base_url} broke the exchange: {exc}", sent=True) from exc
        except BaseException:  # cancelled mid-exchange: the connection is in no known state
            connection.close()
            raise
        self._recycle(base_url, connection)
        return Response(status, answer, b"".join(chunks))

    def _recycle(self, base_url: str, connection: _Connection) -> None:
        conn = connection.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            idle = self._idle.setdefault(base_url, [])
            if len(idle) < self.max_idle:
                idle.append(connection)
                return
        connection.close()


class _Stale(Exception):
    """The connection failed before a byte of the answer came."""

