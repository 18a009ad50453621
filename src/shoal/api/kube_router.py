"""``python -m shoal.api.kube_router``: a service's router in its pod on Kubernetes.

The program of ``serving.router.program`` (its table from the mounted
ConfigMap, ``/metrics`` and ``/healthz`` on the metrics port) with the
callers checked by the API server (``runtime.kubernetes.router_auth``:
TokenReview, then SubjectAccessReview).  It lives in a shell because it
joins the serving layer to a runtime, which neither may import.

    python -m shoal.api.kube_router --service NAME --tenant NS --routes FILE
        [--port 8080] [--metrics-port 9090] [--kubeconfig FILE [--context C]]

Without ``--kubeconfig`` it uses the pod's ServiceAccount (in-cluster).
Bad arguments, or credentials that cannot be used, exit 2 with a message.
"""

from __future__ import annotations

import asyncio
import sys

from shoal.errors import ShoalError
from shoal.runtime.kubernetes.router_auth import Reviews, ReviewVerifier
from shoal.serving.router.program import build_parser, check_args, configure_logging, serve

PROG = "python -m shoal.api.kube_router"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(PROG)
    parser.add_argument("--kubeconfig", help="outside a cluster: who asks the API server")
    parser.add_argument("--context", help="the kubeconfig's context (default: its current)")
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        reviews = Reviews.connect(args.kubeconfig, args.context)
    except ShoalError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    try:
        return asyncio.run(serve(args, ReviewVerifier(reviews, args.service, args.tenant)))
    finally:
        reviews.close()


if __name__ == "__main__":
    sys.exit(main())
