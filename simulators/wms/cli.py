"""The ``python -m simulators wms`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
from pathlib import Path

from simulators.wms.faults import (
    HOSTILE_MODES,
    MALFORMED_REJECTED_VARIANTS,
    REDIRECT_TARGETS,
    REJECT_MODES,
    FaultError,
    Faults,
)
from simulators.wms.server import WmsSimulator

__all__ = ["add_arguments", "faults_from_args", "run", "server_ssl_context"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``wms`` sub-command's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="ingest port (0: pick one)")
    parser.add_argument(
        "--control-port", type=int, default=None, help="control port (default: ingest port + 1)"
    )
    parser.add_argument("--path", default="/api/events")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--reject-pattern", default=None)
    parser.add_argument("--reject-field", default="event_id")
    parser.add_argument("--reject-mode", default="partial", choices=REJECT_MODES)
    parser.add_argument("--token-file", type=Path, default=None, help="require this bearer token")
    parser.add_argument("--max-body-bytes", type=int, default=None)
    parser.add_argument("--retry-after-status", type=int, default=None, choices=[429, 503])
    parser.add_argument("--retry-after", default="1", help="seconds or an HTTP-date")
    parser.add_argument(
        "--retry-after-count", type=int, default=1, help="requests that get it (-1: all)"
    )
    parser.add_argument(
        "--hostile", default=None, choices=HOSTILE_MODES, help="misbehave this way (see docs)"
    )
    parser.add_argument(
        "--hostile-count", type=int, default=-1, help="requests that get it (-1: all)"
    )
    parser.add_argument(
        "--hostile-body-bytes", type=int, default=1024**3, help="size of the huge_body reply"
    )
    parser.add_argument(
        "--hostile-redirect-to",
        default="control",
        choices=REDIRECT_TARGETS,
        help="where redirect_307 points: the ingest path on the control listener, or itself",
    )
    parser.add_argument(
        "--hostile-variant",
        default=None,
        choices=MALFORMED_REJECTED_VARIANTS,
        help="malformed_rejected: always this variant (default: each in turn)",
    )
    parser.add_argument(
        "--hostile-interval-ms", type=float, default=100.0, help="pause between endless_body chunks"
    )
    parser.add_argument("--keep-events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tls-cert", type=Path, default=None,
                        help="serve ingest over HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, default=None, help="key of --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path, default=None,
                        help="require client certificates signed by this CA")


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """An HTTPS server context; with ``client_ca``, clients must present a certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The faults the command line options ask for.

    Raises:
        FaultError: for an option value the fault model refuses.
        OSError: when the token file cannot be read.
    """
    patch: dict[str, object] = {
        "error_rate": args.error_rate,
        "latency_ms": args.latency_ms,
        "reject_pattern": args.reject_pattern,
        "reject_field": args.reject_field,
        "reject_mode": args.reject_mode,
        "max_body_bytes": args.max_body_bytes,
        "retry_after_status": args.retry_after_status,
        "retry_after": args.retry_after,
        "retry_after_count": args.retry_after_count,
        "hostile": args.hostile,
        "hostile_count": args.hostile_count,
        "hostile_body_bytes": args.hostile_body_bytes,
        "hostile_redirect_to": args.hostile_redirect_to,
        "hostile_variant": args.hostile_variant,
        "hostile_interval_ms": args.hostile_interval_ms,
        "seed": args.seed,
    }
    if args.token_file is not None:
        patch["token"] = args.token_file.read_text(encoding="utf-8").strip()
    faults = Faults()
    faults.update(patch)
    return faults


async def _serve(args: argparse.Namespace, faults: Faults) -> None:
    control_port = args.control_port
    if control_port is None:
        control_port = args.port + 1 if args.port else 0
    sim = WmsSimulator(
        host=args.host,
        port=args.port,
        control_port=control_port,
        path=args.path,
        faults=faults,
        keep_events=args.keep_events,
        ssl_context=(server_ssl_context(args.tls_cert, args.tls_key, args.tls_client_ca)
                     if args.tls_cert is not None else None),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sim.start()
    try:
        print(f"wms simulator: ingest {sim.url} control {sim.control_url}", flush=True)  # noqa: T201
        await stop.wait()
    finally:
        await sim.stop()


def run(args: argparse.Namespace) -> int:
    """Run the ``wms`` sub-command until SIGINT/SIGTERM; return the exit code."""
    try:
        faults = faults_from_args(args)
    except (FaultError, OSError) as err:
        print(f"wms: {err}", file=sys.stderr)  # noqa: T201
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, faults))
    return 0
