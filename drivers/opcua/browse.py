"""What an OPC UA server exposes, for writing a device's mapping: event types and variables.

``browse_device`` opens one session (the device's own endpoint, security and
user), lists

- event types: ``BaseEventType`` and its subtypes (or the subtypes of a given
  type), each with every field an event filter built from it selects — its
  own and those inherited, with their browse paths and data types; the
  standard namespace-0 types only when asked;
- variables under a node (the Objects folder without the Server object when
  none is given), with their browse path, data type and current value;

and closes the session. Node ids are written with the namespace URI
(``nsu=...;s=...``), the form a config keeps across a server that reorders
its namespaces. Every request runs under the device's ``request_timeout``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaStatusCodeError

from drivers.opcua import client as opc
from drivers.opcua.config import OpcuaDevice
from drivers.opcua.subscription import parse_node_id

_CLOSE_TIMEOUT_S = 2.0
#: Depth of nested fields followed below an event type (``ActiveState/Id``).
_FIELD_DEPTH = 3
#: Depth of the variable search below a node.
_VARIABLE_DEPTH = 8
#: Supertypes followed up to BaseEventType.
_TYPE_DEPTH = 32


@dataclass(frozen=True, slots=True)
class EventField:
    """One field of an event type: its browse path, data type and the type declaring it."""

    path: str
    data_type: str
    declared_in: str


@dataclass(frozen=True, slots=True)
class EventTypeInfo:
    """One event type with every field its events carry."""

    node_id: str
    browse_name: str
    supertype: str | None
    fields: tuple[EventField, ...]


@dataclass(frozen=True, slots=True)
class VariableInfo:
    """One variable: its node id, browse path from the start node, data type, value."""

    node_id: str
    path: str
    data_type: str
    value: Any
    status: str = "Good"


@dataclass(slots=True)
class BrowseResult:
    """What ``browse_device`` found."""

    event_types: list[EventTypeInfo] = field(default_factory=list)
    variables: list[VariableInfo] = field(default_factory=list)
    #: True when more variables were there than ``limit``.
    truncated: bool = False


def _node(identifier: int) -> ua.NodeId:
    """A namespace-0 node id."""
    return ua.NodeId(ua.Int32(identifier))


class NotReachable(ConnectionError):
    """The server did not accept a session (the message says why)."""


def node_text(node_id: ua.NodeId, namespaces: list[str]) -> str:
    """A node id in config form: with its namespace URI unless it is in namespace 0."""
    text: str = node_id.to_string()
    if node_id.NamespaceIndex == 0 or node_id.NamespaceIndex >= len(namespaces):
        return text
    _, _, ident = text.partition(";")
    return f"nsu={namespaces[node_id.NamespaceIndex]};{ident}"


class _Browser:
    def __init__(self, client: Client, namespaces: list[str], timeout: float) -> None:
        self.client = client
        self.namespaces = namespaces
        self.timeout = timeout
        self._type_names: dict[ua.NodeId, str] = {}

    async def _call(self, coro: Any) -> Any:
        async with asyncio.timeout(self.timeout):
            return await coro

    async def refs(self, node_id: ua.NodeId, ref_type: int, direction: Any,
                   mask: Any) -> list[ua.ReferenceDescription]:
        node = self.client.get_node(node_id)
        result: list[ua.ReferenceDescription] = await self._call(
            node.get_references(ref_type, direction, mask, True))
        return result

    async def type_name(self, node_id: ua.NodeId) -> str:
        name = self._type_names.get(node_id)
        if name is None:
            qn = await self._call(self.client.get_node(node_id).read_browse_name())
            name = self._type_names[node_id] = str(qn.Name)
        return name

    async def supertype(self, node_id: ua.NodeId) -> ua.NodeId | None:
        up = await self.refs(node_id, ObjectIds.HasSubtype, ua.BrowseDirection.Inverse,
                             ua.NodeClass.ObjectType)
        return up[0].NodeId if up else None

    async def is_event_type(self, node_id: ua.NodeId) -> bool:
        base = _node(ObjectIds.BaseEventType)
        cur: ua.NodeId | None = node_id
        for _ in range(_TYPE_DEPTH):
            if cur is None:
                return False
            if cur == base:
                return True
            cur = await self.supertype(cur)
        return False

    async def fields_of(self, type_id: ua.NodeId) -> list[EventField]:
        """Every field of the type, inherited ones first (as an event filter selects them)."""
        chain: list[ua.NodeId] = []
        cur: ua.NodeId | None = type_id
        while cur is not None and len(chain) < _TYPE_DEPTH:
            chain.append(cur)
            if cur == _node(ObjectIds.BaseEventType):
                break
            cur = await self.supertype(cur)
        out: list[EventField] = []
        seen: set[str] = set()
        for t in reversed(chain):
            await self._fields(t, [], await self.type_name(t), out, seen, 0)
        return out

    async def _fields(self, node_id: ua.NodeId, prefix: list[str], declared_in: str,
                      out: list[EventField], seen: set[str], depth: int) -> None:
        refs = await self.refs(node_id, ObjectIds.Aggregates, ua.BrowseDirection.Forward,
                               ua.NodeClass.Object | ua.NodeClass.Variable)
        for ref in refs:
            path = [*prefix, str(ref.BrowseName.Name)]
            text = "/".join(path)
            if ref.NodeClass == ua.NodeClass.Variable and text not in seen:
                seen.add(text)
                dtype = await self._call(self.client.get_node(ref.NodeId).read_data_type())
                out.append(EventField(text, await self.type_name(dtype), declared_in))
            if depth + 1 < _FIELD_DEPTH and ref.ReferenceTypeId != _node(
                    ObjectIds.HasProperty):
                await self._fields(ref.NodeId, path, declared_in, out, seen, depth + 1)

    async def event_types(self, root: ua.NodeId, include_standard: bool) -> list[EventTypeInfo]:
        out: list[EventTypeInfo] = []
        above = await self.supertype(root)
        todo: deque[tuple[ua.NodeId, str | None]] = deque(
            [(root, None if above is None else await self.type_name(above))])
        while todo:
            type_id, parent = todo.popleft()
            name = await self.type_name(type_id)
            if include_standard or type_id.NamespaceIndex != 0:
                out.append(EventTypeInfo(node_text(type_id, self.namespaces), name, parent,
                                         tuple(await self.fields_of(type_id))))
            subs = await self.refs(type_id, ObjectIds.HasSubtype, ua.BrowseDirection.Forward,
                                   ua.NodeClass.ObjectType)
            todo.extend((r.NodeId, name) for r in subs)
        return out

    async def variables(self, root: ua.NodeId, limit: int) -> tuple[list[VariableInfo], bool]:
        out: list[VariableInfo] = []
        skip = {_node(ObjectIds.Server)}
        seen = {root}
        todo: deque[tuple[ua.NodeId, list[str], int]] = deque([(root, [], 0)])
        while todo:
            node_id, path, depth = todo.popleft()
            refs = await self.refs(node_id, ObjectIds.HierarchicalReferences,
                                   ua.BrowseDirection.Forward,
                                   ua.NodeClass.Object | ua.NodeClass.Variable)
            for ref in refs:
                child = ref.NodeId
                if child in seen or child in skip:
                    continue
                seen.add(child)
                child_path = [*path, str(ref.BrowseName.Name)]
                if ref.NodeClass == ua.NodeClass.Variable:
                    if len(out) >= limit:
                        return out, True
                    out.append(await self._variable(child, "/".join(child_path)))
                if depth + 1 < _VARIABLE_DEPTH:
                    todo.append((child, child_path, depth + 1))
        return out, False

    async def _variable(self, node_id: ua.NodeId, path: str) -> VariableInfo:
        node = self.client.get_node(node_id)
        dtype = await self._call(node.read_data_type())
        try:
            dv = await self._call(node.read_data_value())
        except UaStatusCodeError as err:
            return VariableInfo(node_text(node_id, self.namespaces), path,
                                await self.type_name(dtype), None, type(err).__name__)
        value = None if dv.Value is None else dv.Value.Value
        status = dv.StatusCode.name if dv.StatusCode is not None else "Good"
        return VariableInfo(node_text(node_id, self.namespaces), path,
                            await self.type_name(dtype), value, status)


async def browse_device(dev: OpcuaDevice, node: str | None = None, *,
                        include_standard: bool = False, limit: int = 500) -> BrowseResult:
    """Event types and variables of ``dev``'s server (under ``node`` when given).

    ``node`` an event type: that type and its subtypes. Any other node: the
    variables below it. None: every event type of the server's own namespaces
    (and the standard ones with ``include_standard``) and the variables under
    the Objects folder. Raises ``NotReachable`` when no session comes up,
    ``ValueError`` for a node id that is malformed or not on the server.
    """
    opc.quiet_library_logs()
    try:
        client = await opc.connect(dev)
    except Exception as err:
        raise NotReachable(f"cannot open a session with {dev.endpoint}: "
                           f"{type(err).__name__}: {err}") from err
    try:
        namespaces = await client.get_namespace_array()
        b = _Browser(client, namespaces, dev.request_timeout)
        result = BrowseResult()
        if node is None:
            result.event_types = await b.event_types(_node(ObjectIds.BaseEventType),
                                                     include_standard)
            result.variables, result.truncated = await b.variables(
                _node(ObjectIds.ObjectsFolder), limit)
            return result
        root = parse_node_id(node, namespaces)
        try:
            await b.type_name(root)
        except UaStatusCodeError as err:
            raise ValueError(f"node {node!r} is not on the server ({type(err).__name__})"
                             ) from None
        if await b.is_event_type(root):
            result.event_types = await b.event_types(root, True)
        else:
            result.variables, result.truncated = await b.variables(root, limit)
        return result
    finally:
        await opc.close(client, _CLOSE_TIMEOUT_S)
