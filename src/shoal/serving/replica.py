"""One replica process: load a model and serve it over the Open Inference Protocol v2.

    python -m shoal.serving.replica --model PATH --framework F --name NAME \\
        [--version V] [--port P] [--host 127.0.0.1] [--ready-file FILE]

What a runtime that starts it can rely on:

* the socket is bound and listening before the model loads, so ``--port 0``
  (any free port) is never raced: ``/v2/health/live`` answers at once and
  ``/v2/health/ready`` answers 503 until the model is loaded; or the socket
  is inherited, already listening (TCP or Unix): ``--listen-fd N``, or
  ``--listen-fd env`` for the descriptor in ``$SHOAL_LISTEN_FD``;
* once the model is loaded, one JSON line is printed to stdout and, with
  ``--ready-file``, written to that file atomically:
  ``{"ready": true, "host", "port", "pid", "model", "version"}`` (``"socket":
  PATH`` instead of host and port on a Unix socket);
* if the model fails to load, the loader's error is printed to stderr
  (``shoal-replica: cannot load model NAME: ...``), the ready file gets
  ``{"ready": false, "error": "..."}``, and the process exits 1;
* bad arguments exit 2; on SIGTERM (or SIGINT) it stops accepting, finishes
  the requests in flight (for up to 10 s), then ends by that signal, as
  uvicorn does (exit status 143 in a shell, -15 from ``subprocess``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import TypeAdapter, ValidationError

from shoal.domain.base import is_name
from shoal.domain.service import FRAMEWORKS, TensorSpec
from shoal.serving.app import MAX_BODY_BYTES, ModelSlot, create_app
from shoal.serving.loaders import LoadError, load_model

LOAD_FAILED = 1
LISTEN_FD_ENV = "SHOAL_LISTEN_FD"
"""Where ``--listen-fd env`` finds the descriptor (the embedded runtime sets it)."""
_TENSORS = TypeAdapter(list[TensorSpec])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shoal.serving.replica",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model file (or folder, for embedding)")
    parser.add_argument("--framework", required=True, choices=FRAMEWORKS)
    parser.add_argument("--name", required=True, help="the model's name on the protocol")
    parser.add_argument("--version", default="1", help="the model's version (default 1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    parser.add_argument("--ready-file", type=Path, help="where to write the ready line")
    parser.add_argument(
        "--listen-fd",
        help=f"serve on this inherited listening socket (a descriptor number, or 'env': "
        f"${LISTEN_FD_ENV}) instead of --host/--port")
    parser.add_argument("--entry-point", help="pytorch state dicts: module:callable")
    parser.add_argument("--inputs", help="declared input tensors, as JSON")
    parser.add_argument("--outputs", help="declared output tensors, as JSON")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    args = parser.parse_args(argv)
    if not is_name(args.name):
        parser.error(f"--name: expected a lowercase DNS name, got {args.name!r}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port: expected 0 to 65535, got {args.port}")
    if args.max_body_bytes <= 0:
        parser.error("--max-body-bytes: expected a positive number of bytes")
    for option in ("inputs", "outputs"):
        text = getattr(args, option)
        if text is not None:
            try:
                setattr(args, option, _TENSORS.validate_json(text))
            except ValidationError as exc:
                parser.error(f"--{option}: expected a JSON list of {{name, datatype, shape}}: "
                             f"{exc.errors()[0]['msg']}")
    if args.model is None and args.framework != "embedding":
        parser.error(f"--model is needed for framework {args.framework}")
    if args.listen_fd is not None:
        text = os.environ.get(LISTEN_FD_ENV, "") if args.listen_fd == "env" else args.listen_fd
        if not text.isdigit():
            where = f"${LISTEN_FD_ENV}" if args.listen_fd == "env" else "--listen-fd"
            parser.error(f"{where}: expected a file descriptor number, got {text!r}")
        args.listen_fd = int(text)
    return args


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _listen(args: argparse.Namespace) -> socket.socket:
    if args.listen_fd is not None:
        sock = socket.socket(fileno=args.listen_fd)
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise OSError(f"descriptor {args.listen_fd} is not a listening stream socket")
        return sock
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # IPPROTO_TCP said outright: asyncio turns Nagle's algorithm off only on connections
    # whose socket says it (else an answer written in two parts waits ~40 ms for the ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    return sock


def _where(sock: socket.socket) -> dict[str, Any]:
    """Where the replica listens, for the ready line."""
    if sock.family == socket.AF_UNIX:
        return {"socket": sock.getsockname()}
    host, port = sock.getsockname()[:2]
    return {"host": host, "port": port}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sock = _listen(args)
    except OSError as exc:
        where = (f"descriptor {args.listen_fd}" if args.listen_fd is not None
                 else f"{args.host}:{args.port}")
        print(f"shoal-replica: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    slot = ModelSlot(args.name, args.version)
    server = uvicorn.Server(uvicorn.Config(
        create_app(slot, args.max_body_bytes), log_level="warning", access_log=False,
        timeout_graceful_shutdown=10,
    ))
    outcome: dict[str, str] = {}

    def load() -> None:
        try:
            model = load_model(args.framework, args.model, entry_point=args.entry_point,
                               inputs=args.inputs, outputs=args.outputs)
        except LoadError as exc:
            outcome["error"] = str(exc)
            slot.failed(str(exc))
            print(f"shoal-replica: cannot load model {args.name}: {exc}", file=sys.stderr,
                  flush=True)
            if args.ready_file is not None:
                _write_atomically(args.ready_file, {"ready": False, "error": str(exc)})
            server.should_exit = True
            return
        slot.ready(model)
        line = {"ready": True, **_where(sock), "pid": os.getpid(), "model": args.name,
                "version": args.version}
        if args.ready_file is not None:
            _write_atomically(args.ready_file, line)
        print(json.dumps(line), flush=True)

    threading.Thread(target=load, name="model-loader", daemon=True).start()
    server.run(sockets=[sock])
    return LOAD_FAILED if "error" in outcome else 0


if __name__ == "__main__":
    sys.exit(main())
