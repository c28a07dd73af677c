"""The sorter simulator's OPC UA server: address space, security, event firing.

Address space (namespace ``urn:warehouse-gateway:sorter-sim:model``, index 2)::

    Objects
      InductReader        ns=2;s=InductReader    AutoID-style optical reader; fires
                                                 AutoIdScanEventType (DeviceName, ScanId,
                                                 ScanResult{CodeType, ScanData, Timestamp})
      Sorter              ns=2;s=Sorter          fires DivertConfirmEventType (TrackingId,
                                                 ConfirmSeq, Barcode, Induct, Chute, Result)
        State             ns=2;s=Sorter.State            String, PackML state name
        StateCurrent      ns=2;s=Sorter.StateCurrent     Int32, PackML state number
        BeltSpeed         ns=2;s=Sorter.BeltSpeed        Double, m/s
        Counters.<Name>   ns=2;s=Sorter.Counters.Total   Int64 (Diverted, NoRead, ...)
        Chutes.<Chute>    ns=2;s=Sorter.Chutes.CHUTE-01.Full   Boolean
      Telemetry.Tnnnnn    ns=2;s=Telemetry.T00000        Double (benchmark mode only)
      Simulation          ns=2;s=Simulation      methods that inject faults (see docs)

Both event sources historize their events: HistoryRead (events) is answered
from the device's own log (``simulators.sorter_state``).
"""

from __future__ import annotations

import asyncio
import copy
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import structlog
from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.structures104 import new_struct, new_struct_field
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server import monitored_item_service
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from cryptography.x509.oid import ExtendedKeyUsageOID

from simulators.sorter_state import LogHistory, LogRecord, SorterState, to_datetime

log = structlog.get_logger(__name__)

NAMESPACE = "urn:warehouse-gateway:sorter-sim:model"
APPLICATION_URI = "urn:warehouse-gateway:sorter-sim"
READER, SORTER = "InductReader", "Sorter"
COUNTER_NODES = {"total": "Total", "diverted": "Diverted", "no_read": "NoRead",
                 "no_destination": "NoDestination", "chute_full": "ChuteFull",
                 "recirculated": "Recirculated", "lost": "Lost"}
#: PackML state numbers of the states this simulator uses.
PACKML_STATES = {"Stopped": 2, "Starting": 3, "Idle": 4, "Execute": 6}

_CONFIRM_PROPS = [("TrackingId", ua.VariantType.String), ("ConfirmSeq", ua.VariantType.Int64),
                  ("Barcode", ua.VariantType.String), ("Induct", ua.VariantType.String),
                  ("Chute", ua.VariantType.String), ("Result", ua.VariantType.String)]

#: Endpoints offered per ``--security``: every policy the gateway supports, in that mode.
SECURITY = {
    "none": (ua.SecurityPolicyType.NoSecurity,),
    "sign": (ua.SecurityPolicyType.Basic256Sha256_Sign,
             ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
             ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign),
    "sign-and-encrypt": (ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                         ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
                         ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt),
}


def _no_copy_on_change(self: Any, cur_val: ua.DataValue) -> None:
    # asyncua deep-copies every written value once per monitored item, which
    # caps a server at ~9k changes/s on this class of machine. The simulator
    # never mutates a DataValue after writing it, so keeping the reference is safe.
    self.old_dvalue = self.current_dvalue
    self.current_dvalue = cur_val



def ensure_certificate(folder: Path, name: str, app_uri: str, *,
                       server: bool) -> tuple[Path, Path]:
    """A self-signed application certificate ``<name>_cert.der`` + ``<name>_key.pem``.

    Generated on first use (kept afterwards), with the application URI and the
    host names ``localhost``, ``127.0.0.1`` and this host's name in the SAN.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}_cert.der", folder / f"{name}_key.pem"
    if not (cert.exists() and key.exists()):
        use = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        asyncio.run(cert_gen.setup_self_signed_certificate(
            key, cert, app_uri, socket.gethostname(), [use],
            {"organizationName": "warehouse-gateway"}))
    return cert, key


class _PasswordUsers:
    """One username/password pair, as a plant's user list would hold."""

    def __init__(self, username: str, password: str) -> None:
        self._username, self._password = username, password

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username == self._username and password == self._password:
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class Nodes:
    """Node handles the simulation writes to."""

    state: ua.NodeId
    state_current: ua.NodeId
    belt_speed: ua.NodeId
    counters: dict[str, ua.NodeId]
    chutes: dict[str, ua.NodeId]
    telemetry: list[ua.NodeId] = field(default_factory=list)


class SorterServer:
    """The asyncua server of the simulator and what fires its events."""

    def __init__(self, state: SorterState, *, host: str, port: int, chutes: list[str],
                 reader_name: str, security: str = "none", certs: Path | None = None,
                 username: str | None = None, password: str | None = None,
                 telemetry_nodes: int = 0) -> None:
        # Patched here, not at import: only a process that runs this server is affected.
        monitored_item_service.MonitoredItemValues.set_current_datavalue = (  # type: ignore[method-assign]
            _no_copy_on_change)
        self.state = state
        self.host, self.port = host, port
        self.chutes = chutes
        self.reader_name = reader_name
        self.security = security
        self.certs = certs
        self.telemetry_count = telemetry_nodes
        users = _PasswordUsers(username, password) if username and password else None
        self.server = Server(user_manager=users)  # type: ignore[arg-type]
        self.idx = 2
        self._templates: dict[str, Any] = {}
        self._sources: dict[str, ua.NodeId] = {}
        self.nodes: Nodes | None = None
        self.control: dict[str, Callable[[], Awaitable[str]]] = {}
        self._require_login = users is not None

    def nid(self, name: str) -> ua.NodeId:
        """The node id ``ns=2;s=<name>``."""
        return ua.NodeId.from_string(f"ns={self.idx};s={name}")

    async def start(self) -> None:
        """Build the address space and start listening."""
        srv = self.server
        await srv.init()
        srv.set_endpoint(f"opc.tcp://{self.host}:{self.port}/")
        srv.set_server_name("Sorter simulator")
        await srv.set_application_uri(APPLICATION_URI)
        srv.set_security_policy(list(SECURITY[self.security]))
        if self.security != "none":
            if self.certs is None:
                raise ValueError("--security sign/sign-and-encrypt needs --certs DIR")
            cert, key = await asyncio.to_thread(
                ensure_certificate, self.certs, "server", APPLICATION_URI, server=True)
            await srv.load_certificate(str(cert))
            await srv.load_private_key(str(key))
        if self._require_login:
            srv.set_identity_tokens([ua.UserNameIdentityToken])
        self.idx = await srv.register_namespace(NAMESPACE)
        await self._build()
        srv.iserver.history_manager.set_storage(LogHistory(
            self.state, {node: name for name, node in self._sources.items()}, self.build_event))
        await srv.start()

    async def stop(self) -> None:
        """Stop listening."""
        await self.server.stop()

    async def _build(self) -> None:
        srv = self.server
        scan_type_node, _ = await new_struct(srv, self.nid("ScanResult"), "ScanResult", [
            new_struct_field("CodeType", ua.VariantType.String),
            new_struct_field("ScanData", ua.VariantType.String),
            new_struct_field("Timestamp", ua.VariantType.DateTime),
        ])
        await srv.load_data_type_definitions()
        scan_etype = await self._event_type("AutoIdScanEventType", [
            ("DeviceName", ua.VariantType.String, None), ("ScanId", ua.VariantType.Int64, None),
            ("ScanResult", ua.VariantType.ExtensionObject, scan_type_node.nodeid)])
        confirm_etype = await self._event_type(
            "DivertConfirmEventType", [(n, t, None) for n, t in _CONFIRM_PROPS])
        objects = srv.nodes.objects
        reader = await objects.add_object(self.nid(READER), READER)
        await reader.add_property(self.nid(f"{READER}.DeviceName"), "DeviceName", self.reader_name)
        sorter = await objects.add_object(self.nid(SORTER), SORTER)
        for node, etype, name in ((reader, scan_etype, READER), (sorter, confirm_etype, SORTER)):
            gen = await srv.get_event_generator(etype, node.nodeid)
            self._templates[name] = gen.event
            self._sources[name] = node.nodeid
            await node.set_event_notifier([ua.EventNotifier.SubscribeToEvents,
                                           ua.EventNotifier.HistoryRead])
        nodes = Nodes(
            state=(await sorter.add_variable(self.nid("Sorter.State"), "State", "Idle")).nodeid,
            state_current=(await sorter.add_variable(
                self.nid("Sorter.StateCurrent"), "StateCurrent", PACKML_STATES["Idle"],
                ua.VariantType.Int32)).nodeid,
            belt_speed=(await sorter.add_variable(
                self.nid("Sorter.BeltSpeed"), "BeltSpeed", 2.0, ua.VariantType.Double)).nodeid,
            counters={}, chutes={})
        counters = await sorter.add_folder(self.nid("Sorter.Counters"), "Counters")
        for key, name in COUNTER_NODES.items():
            var = await counters.add_variable(self.nid(f"Sorter.Counters.{name}"), name,
                                              self.state.counters[key], ua.VariantType.Int64)
            nodes.counters[key] = var.nodeid
        chutes = await sorter.add_folder(self.nid("Sorter.Chutes"), "Chutes")
        for chute in self.chutes:
            obj = await chutes.add_object(self.nid(f"Sorter.Chutes.{chute}"), chute)
            var = await obj.add_variable(self.nid(f"Sorter.Chutes.{chute}.Full"), "Full", False)
            nodes.chutes[chute] = var.nodeid
        if self.telemetry_count:
            folder = await objects.add_folder(self.nid("Telemetry"), "Telemetry")
            for i in range(self.telemetry_count):
                var = await folder.add_variable(self.nid(f"Telemetry.T{i:05d}"), f"T{i:05d}", 0.0,
                                                ua.VariantType.Double)
                nodes.telemetry.append(var.nodeid)
        self.nodes = nodes
        sim = await objects.add_object(self.nid("Simulation"), "Simulation")
        for name in ("DropSubscriptions", "InjectBadConfirm", "InjectBadValue"):
            await sim.add_method(self.nid(f"Simulation.{name}"), name, self._method(name),
                                 [], [ua.VariantType.String])

    async def _event_type(self, name: str,
                          props: list[tuple[str, ua.VariantType, ua.NodeId | None]]) -> Node:
        # A string node id for the type (clients configure it), numbered ones for its fields.
        base = self.server.get_node(ObjectIds.BaseEventType)
        etype = await base.add_object_type(self.nid(name), name)
        for prop, vtype, dtype in props:
            await etype.add_property(self.nid(f"{name}.{prop}"), prop, ua.get_default_value(vtype),
                                     varianttype=vtype, datatype=dtype)
        return etype

    def _method(self, name: str) -> Callable[..., Awaitable[list[ua.Variant]]]:
        async def call(parent: ua.NodeId) -> list[ua.Variant]:
            action = self.control.get(name)
            text = await action() if action is not None else "not available"
            log.info("sorter_sim_control", method=name, result=text)
            return [ua.Variant(text, ua.VariantType.String)]
        return call

    async def drop_subscriptions(self) -> str:
        """Delete every subscription on the server without telling its client."""
        service = self.server.iserver.subscription_service
        ids = list(service.subscriptions)
        await service.delete_subscriptions(ids)
        return f"deleted subscriptions {ids}"

    def build_event(self, rec: LogRecord) -> Any:
        """The OPC UA event of one logged record (live firing and history use this)."""
        ev = copy.copy(self._templates[rec.source])
        f = rec.fields
        when = to_datetime(rec.time_us)
        ev.EventId = f"{rec.source}/{rec.seq}".encode()
        ev.Time = when
        ev.ReceiveTime = when
        ev.LocalTime = None
        if rec.source == SORTER:
            ev.TrackingId = f["tracking_id"]
            ev.ConfirmSeq = f["confirm_seq"]
            ev.Barcode = f["barcode"]
            ev.Induct = f["induct"]
            ev.Chute = f["chute"]
            ev.Result = f["result"]
            ev.Severity = 100 if f["result"] == "diverted" else 500
            ev.Message = ua.LocalizedText(f"{f['tracking_id']} {f['result']} {f['chute'] or ''}")
        else:
            ev.DeviceName = f["device_name"]
            ev.ScanId = f["scan_id"]
            ev.ScanResult = ua.ScanResult(  # type: ignore[attr-defined]
                CodeType=f["code_type"], ScanData=f["code"],
                Timestamp=to_datetime(f["scan_time_us"]))
            ev.Severity = 100 if f["code"] else 500
            ev.Message = ua.LocalizedText(f"scan {f['scan_id']} {f['code'] or 'NOREAD'}")
        return ev

    def raw_event(self, source: str, when: datetime, **fields: Any) -> Any:
        """An event of ``source`` with arbitrary field values (for fault injection)."""
        ev = copy.copy(self._templates[source])
        ev.EventId = f"{source}/injected/{when.timestamp()}".encode()
        ev.Time = ev.ReceiveTime = when
        ev.LocalTime = None
        for k, v in fields.items():
            setattr(ev, k, v)
        return ev

    async def fire(self, ev: Any) -> None:
        """Send one event to every subscription monitoring its source."""
        await self.server.iserver.isession.subscription_service.trigger_event(ev)

    async def write(self, node: ua.NodeId, value: Any, vtype: ua.VariantType,
                    when: datetime | None = None) -> None:
        """Write a variable's value with a source timestamp (default: now)."""
        stamp = cast(ua.DateTime, when or datetime.now(UTC))
        await self.server.iserver.aspace.write_attribute_value(
            node, AttributeIds.Value, ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=stamp,
                                                   ServerTimestamp=stamp))

    def node(self, nodeid: ua.NodeId) -> Node:
        """A node handle on the server's own session."""
        return self.server.get_node(nodeid)
