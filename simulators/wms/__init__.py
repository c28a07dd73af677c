"""WMS/ERP simulator: an HTTP server speaking the gateway's upstream contract.

The ingest listener takes ``POST <path>`` with ``{"events": [...]}``, dedups by
``event_id`` and records what it accepted. Faults (outage, errors, Retry-After,
latency, rejections, auth, size limits) are injected on request, in process
(:class:`Faults`, :meth:`WmsSimulator.set_outage`) or over the control API.

The control API (stats, recorded events, faults) has a listener of its own so
that it stays reachable while the ingest listener is down for an outage.

Hostile faults (``Faults.hostile``) rehearse a misbehaving WMS: a 200 whose
body is an HTML page or a malformed ``rejected`` list, redirects, a huge or an
endless body, an HTML 502. The huge and endless bodies are generated while
streaming, never held in memory.

Counting rules: ``received`` counts the events of requests that the normal
ingest path answered 2xx; each of them is then exactly one of new (``unique``
grows), duplicate (its ``event_id`` was accepted before) or rejected by the
reject rule, so ``duplicates == received - unique - rejected``. A hostile
reply accepts nothing, whatever its status (a 200 with a garbage body
included): it only counts in ``requests``, ``status_counts`` and
``hostile_requests``, so ``unique`` and ``received`` are exactly what the
simulator really accepted. Two replies are true to what they say and count
by the normal rules: a request that a 307 sends to the ingest path on the
control listener is accepted there, and the ``reason_not_string`` variant of
``malformed_rejected`` (a well-formed partial rejection but for the type of
its reason, which the upstream contract reads as such) really accepts the
batch but its first new event, counted in ``rejected``.

The package: ``faults`` (fault model and its validation), ``events`` (the
bounded record of accepted events), ``server`` (listeners, ingest handling
and the hostile modes), ``control`` (the control API) and ``cli`` (the
``python -m simulators wms`` command line).
"""

from simulators.wms.cli import add_arguments, faults_from_args, run, server_ssl_context
from simulators.wms.events import EventLog
from simulators.wms.faults import (
    MALFORMED_REJECTED_VARIANTS,
    FaultError,
    Faults,
    HostileMode,
    RedirectTarget,
    RejectMode,
    validate_faults,
)
from simulators.wms.server import LANDING_PATH, WmsSimulator

__all__ = [
    "LANDING_PATH",
    "MALFORMED_REJECTED_VARIANTS",
    "EventLog",
    "FaultError",
    "Faults",
    "HostileMode",
    "RedirectTarget",
    "RejectMode",
    "WmsSimulator",
    "add_arguments",
    "faults_from_args",
    "run",
    "server_ssl_context",
    "validate_faults",
]
