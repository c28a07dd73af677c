"""The driver's subscription: raw publish results, monitored items, node ids."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import Subscription
from asyncua.ua.attribute_ids import AttributeIds

from drivers.opcua.config import OpcuaDevice

#: Monitored items per CreateMonitoredItems request (large node lists are chunked).
ITEMS_PER_REQUEST = 1000

OnPublish = Callable[[ua.PublishResult], Awaitable[None]]


class RawSubscription(Subscription):
    """A subscription whose publish results go, whole and undecoded, to one callback.

    asyncua's handler mode makes one task per notification; at thousands of
    data changes per second that dominates. Here the driver walks each
    ``PublishResult`` itself, in the publish loop (which also gives natural
    back-pressure: the next publish request waits for the callback).
    The silent-subscription check is the driver's own (``last_publish_at``).
    """

    def __init__(self, client: Client, params: ua.CreateSubscriptionParameters,
                 on_publish: OnPublish) -> None:
        super().__init__(client.uaclient.session, params, handler=_NO_HANDLER)
        self._on_publish = on_publish

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        """Called by the session's publish loop for every publish response."""
        self.last_publish_at = time.monotonic()
        await self._on_publish(publish_result)

    def is_stale(self, margin: float) -> bool:
        """Never: asyncua's own watchdog stays out of the way of the driver's."""
        return False


class _NoHandler:
    pass


_NO_HANDLER: Any = _NoHandler()


def monitored_item(node: ua.NodeId, attr: AttributeIds, handle: int, queue: int,
                   sampling_ms: float, flt: ua.EventFilter | None
                   ) -> ua.MonitoredItemCreateRequest:
    """A CreateMonitoredItems entry (reporting, discard oldest)."""
    params = ua.MonitoringParameters(ClientHandle=handle, SamplingInterval=sampling_ms,
                                     QueueSize=queue, DiscardOldest=True)
    if flt is not None:
        params.Filter = flt
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=attr),
        MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=params)


async def subscribe(
    client: Client, dev: OpcuaDevice, on_publish: OnPublish,
    events: list[tuple[ua.NodeId, int, int, ua.EventFilter]],
    nodes: list[tuple[ua.NodeId, int]],
) -> tuple[RawSubscription, float]:
    """Create the subscription and its items; return it and its keep-alive period (s).

    ``events`` are ``(source, handle, queue size, filter)``, ``nodes`` are
    ``(node, handle)``. Raises ``ValueError`` naming the first item the server refused.
    """
    params = ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=dev.publishing_interval * 1000,
        # The server ends a subscription nobody publishes for after this many
        # intervals; the driver's watchdog acts first.
        RequestedLifetimeCount=dev.keepalive_count * dev.watchdog_keepalives * 3,
        RequestedMaxKeepAliveCount=dev.keepalive_count,
        MaxNotificationsPerPublish=0, PublishingEnabled=True, Priority=0)
    sub = RawSubscription(client, params, on_publish)
    result = await sub.init()
    # The silence clock starts now: a subscription that never publishes is silent too.
    sub.last_publish_at = time.monotonic()
    keepalive_s = (result.RevisedPublishingInterval / 1000
                   * max(1, result.RevisedMaxKeepAliveCount))
    requests = [monitored_item(source, AttributeIds.EventNotifier, handle, queue, 0.0, flt)
                for source, handle, queue, flt in events]
    requests += [monitored_item(node, AttributeIds.Value, handle, dev.queue_size,
                                dev.sampling_interval * 1000, None) for node, handle in nodes]
    for i in range(0, len(requests), ITEMS_PER_REQUEST):
        chunk = requests[i:i + ITEMS_PER_REQUEST]
        results = await sub.create_monitored_items(chunk)
        for req, res in zip(chunk, results, strict=True):
            if isinstance(res, ua.StatusCode):
                raise ValueError(f"cannot monitor {req.ItemToMonitor.NodeId.to_string()}: "
                                 f"{res.name}")
    return sub, keepalive_s


def parse_node_id(text: str, namespaces: list[str]) -> ua.NodeId:
    """Parse a node id; ``nsu=<uri>;...`` is resolved against the server's namespaces."""
    if text.startswith("nsu="):
        uri, _, rest = text[4:].partition(";")
        if uri not in namespaces:
            raise ValueError(f"namespace {uri!r} of node {text!r} is not on the server")
        text = f"ns={namespaces.index(uri)};{rest}"
    return ua.NodeId.from_string(text)
