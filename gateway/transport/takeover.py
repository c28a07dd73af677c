"""Telling a client-id clash ("session taken over") from other connection losses.

An MQTT broker allows one connection per client id: when a second client
connects with the same id, the broker closes the first one. Two gateways (or
a gateway and a test tool) sharing an id therefore take the session from each
other in turn, each reconnect evicting the other, and both see nothing but
dropped connections.

How the broker says so:

- MQTT 5 brokers that follow the specification send the old connection a
  DISCONNECT with reason code 0x8E (142, "Session taken over"): Mosquitto
  from 2.0.15, EMQX, HiveMQ. That is certain.
- Mosquitto before 2.0.15 (Debian 12 ships 2.0.11), and every broker
  towards an MQTT 3.1.1 client (3.1.1 has no DISCONNECT from the server),
  just close the TCP connection. A single such close says nothing, but a
  clash has a signature: the broker closes an established connection
  without a reason, well inside the keepalive interval (so not a keepalive
  timeout), and accepts the reconnect at once (so it was not going down).
  ``SILENT_DROPS`` such drops within ``SILENT_DROP_WINDOW_S``, each followed
  by a reconnect accepted at the first attempt, are read as a clash (a
  flapping pair makes one a second); a failed connect attempt (broker
  restarting) or a drop after a long-lived connection clears the evidence.
  Only a broker restarted that often, each time faster than the gateway's
  first reconnect attempt, looks the same.

The detector is pure state plus an injected clock, so it can be driven
without a broker.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ALERT_HOLD_S",
    "SESSION_TAKEN_OVER",
    "SILENT_DROPS",
    "SILENT_DROP_WINDOW_S",
    "Takeover",
    "TakeoverDetector",
]

#: MQTT 5 DISCONNECT reason code "Session taken over".
SESSION_TAKEN_OVER = 142
#: paho's reason code for a connection that closed without a DISCONNECT packet.
_UNSPECIFIED_ERROR = 128
#: This many silent drops within the window (each reconnect accepted) are read as a clash.
SILENT_DROPS = 3
SILENT_DROP_WINDOW_S = 60.0
#: A take-over keeps its alert this long after the last one, so a flapping pair
#: (connected most of the time) stays visible on the status page.
ALERT_HOLD_S = 300.0

Evidence = Literal["reason_code", "silent_drops"]


@dataclass(frozen=True, slots=True)
class Takeover:
    """One connection loss attributed to another client using our client id."""

    evidence: Evidence
    """``reason_code``: the broker said so (0x8E); ``silent_drops``: inferred."""
    message: str
    """What the operator reads (log, ``last_error``, alert)."""
    counted: int
    """Take-overs this drop adds to the total (earlier silent drops are counted
    once the pattern is recognised)."""


class TakeoverDetector:
    """Classifies the drops of one client id's connection."""

    def __init__(self, client_id: str, keepalive: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client_id = client_id
        self._keepalive = keepalive
        self._clock = clock
        self.takeovers = 0
        """Connection losses attributed to a client-id clash, since start."""
        self.last_at: float | None = None
        self.last: Takeover | None = None
        self._connected_at: float | None = None
        #: Time of a silent drop whose reconnect has not happened yet.
        self._pending: float | None = None
        #: Silent drops, each followed by a reconnect at the first attempt.
        self._silent: deque[float] = deque()

    def connected(self) -> Takeover | None:
        """The broker accepted a connection (CONNACK success); a take-over if this
        reconnect completes the silent-drop pattern."""
        now = self._connected_at = self._clock()
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        self._silent.append(pending)
        while self._silent and now - self._silent[0] > SILENT_DROP_WINDOW_S:
            self._silent.popleft()
        n = len(self._silent)
        if n < SILENT_DROPS:
            return None
        # Within a recognised flap the earlier drops in the window are counted already.
        episode = (self.last is not None and self.last.evidence == "silent_drops"
                   and self.last_at is not None and now - self.last_at <= SILENT_DROP_WINDOW_S)
        return self._record(Takeover("silent_drops", self._message("silent_drops", n),
                                     1 if episode else n), now)

    def connect_failed(self) -> None:
        """A connect attempt failed: the broker was away, so earlier drops are explained."""
        self._silent.clear()
        self._pending = None

    def dropped(self, *, from_server: bool, reason_code: int | None,
                by_us: bool = False) -> Takeover | None:
        """An established connection ended; return a take-over the broker named, or None.

        ``from_server``: the broker sent a DISCONNECT packet with ``reason_code``;
        otherwise ``reason_code`` is what paho made of the loss. A silent drop is
        only judged when the reconnect succeeds (see ``connected``).
        """
        now = self._clock()
        up_since, self._connected_at = self._connected_at, None
        self._pending = None
        if by_us or up_since is None:
            return None
        if from_server:
            self._silent.clear()
            if reason_code != SESSION_TAKEN_OVER:
                return None
            return self._record(Takeover("reason_code", self._message("reason_code", 1), 1), now)
        if reason_code != _UNSPECIFIED_ERROR or now - up_since >= self._keepalive:
            # Our keepalive timing out, or a connection that lived long enough
            # for a broker-side keepalive timeout: not a clash's signature.
            self._silent.clear()
            return None
        self._pending = now
        return None

    def silent_drop_pending(self) -> bool:
        """True between a silent drop and the next connect attempt's outcome."""
        return self._pending is not None

    def _record(self, t: Takeover, now: float) -> Takeover:
        self.takeovers += t.counted
        self.last_at = now
        self.last = t
        return t

    def _message(self, evidence: Evidence, drops: int) -> str:
        cid = self.client_id
        if evidence == "reason_code":
            return ("the broker closed this connection because another client connected "
                    f"with the same client id '{cid}' (session taken over): two gateways "
                    "or clients share this id")
        return (f"the broker closed this connection {drops} times within "
                f"{SILENT_DROP_WINDOW_S:.0f} s without giving a reason, accepting each "
                "reconnect at once: most likely another client connected with the same "
                f"client id '{cid}' (session taken over): two gateways or clients share "
                "this id")

    def recent(self) -> bool:
        """True while the last take-over is less than ``ALERT_HOLD_S`` old."""
        return self.last_at is not None and self._clock() - self.last_at < ALERT_HOLD_S

    def message(self) -> str | None:
        """The last take-over's explanation while it is recent, else None."""
        return self.last.message if self.last is not None and self.recent() else None

    def alert(self) -> str | None:
        """The explanation with the count and age, while recent."""
        msg = self.message()
        if msg is None or self.last_at is None:
            return None
        age = self._clock() - self.last_at
        return f"{msg}; {self.takeovers} take-over(s) so far, the last {age:.0f} s ago"
