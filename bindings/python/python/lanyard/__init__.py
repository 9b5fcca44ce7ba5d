"""Lanyard for Python gateways.

A thin layer over the Rust SDK (the ``_lanyard`` extension): it adds no
rules, only Python idioms (dicts instead of JSON text).

- ``decode(data, kind=None)``: any SDK message as ``(type, dict)``.
- ``encode_frame(topic, message)`` and ``FrameDecoder``: the framed serial
  link between a device and its gateway (COBS frames with a CRC-16, each
  carrying ``[topic, message]``).
- ``Bridge``: the gateway bridge of ``lanyard bridge``, a device's serial
  link to an MQTT broker.
- ``App``: an app of a twin host: desired state, shadows, commands and
  their acknowledgements, events (``lanyard.aio.App``: the same for
  asyncio).
- ``Device``: this host as a Lanyard device, with commands, sensors,
  battery and LED given as Python callables.
- ``Shadow``: the shadow engine itself, in this process: desired,
  reported, delta, versions, conflict policies per property, and the AWS
  IoT view of its documents (``update(request)``, ``get()``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple, TypedDict, Union, cast


from ._lanyard import App as _App
from ._lanyard import Bridge, FrameDecoder, LanyardError, Rejected, describe, encode_frame
from ._lanyard import Device as _Device
from ._lanyard import EventQueue as _EventQueue
from ._lanyard import Shadow as _Shadow

__all__ = ["App", "Bridge", "Closed", "CommandOutcome", "ConfigPushReport", "ConnectionFailed",
           "Device", "DeviceSummary", "Event", "Events", "ShadowDocument",
           "FrameDecoder", "InvalidInput", "Json", "LanyardError", "LinkError", "NotFound",
           "NotPermitted", "Rejected", "Shadow", "ShadowRejected", "Timeout", "VersionConflict",
           "WrongType", "decode", "encode_frame"]

_log = logging.getLogger("lanyard")


# One hierarchy: everything Lanyard raises is a LanyardError, and each is
# also the builtin that code without Lanyard in mind already catches. The
# native part raises these (src/errors.rs).

class InvalidInput(LanyardError, ValueError):
    """Input that cannot be sent or used (nothing was sent)."""


class WrongType(LanyardError, TypeError):
    """An argument of the wrong type."""


class Timeout(LanyardError, TimeoutError):
    """No answer in time."""


class LinkError(LanyardError, OSError):
    """The broker, a file, or the link failed."""


class ConnectionFailed(LinkError, ConnectionError):
    """A service could not be reached (the provisioning service)."""


class NotPermitted(LanyardError, PermissionError):
    """Refused by the fleet (a claim the provisioning service refused)."""


class Closed(LanyardError, RuntimeError):
    """Used after it was closed, or run twice."""


class NotFound(LanyardError, KeyError):
    """Nothing there (no conflict parked at that path)."""

#: A JSON object as a dict: state, documents, events.
Json = Dict[str, Any]
#: A file path.
PathLike = Union[str, "os.PathLike[str]"]


class CommandOutcome(TypedDict):
    """A command's final acknowledgement (``App.command``)."""

    status: str
    reason: Optional[str]
    detail: Optional[str]
    result: Optional[Json]
    result_cbor: Optional[bytes]


class ShadowDocument(TypedDict):
    """A device's shadow as ``App.get_shadow`` returns it."""

    version: int
    desired: Json
    reported: Json
    in_sync: bool
    #: Each desired property the device refuses, dotted, to the reason's name.
    rejected: Dict[str, str]


class DeviceSummary(TypedDict):
    """One device as ``App.list_devices`` lists it."""

    device: str
    online: bool
    state: Optional[str]
    health: Optional[str]
    firmware: Optional[str]
    last_seen_ms: Optional[int]
    version: int
    in_sync: bool
    #: Conflicts waiting for an operator.
    parked: int
    #: Desired properties the device refuses.
    refused: int
    decommissioned: bool


class ConfigPushReport(TypedDict):
    """What became of a configuration pushed to devices
    (``App.push_config``)."""

    applied: List[str]
    #: ``[device, version it runs]``
    ignored: List[List[Any]]
    #: ``[device, why]``
    rejected: List[List[str]]
    unanswered: List[str]


class Event(TypedDict, total=False):
    """An event (``App.next_event``, ``Events``). Every event has ``type``
    and ``device``; the other keys are those of its type: ``"delta"``:
    ``state``; ``"reported"``: ``state``, ``rejected``; ``"telemetry"``:
    ``seq``, ``time_ms``, ``readings``; ``"ack"``: ``command_id``,
    ``status``; ``"fleet"``: ``kind``, ``at_ms`` and the kind's own
    (``last_seen_ms``, ``from``, ``to``, ``status``, ``path``, ...)."""

    type: str
    device: str
    state: Json
    rejected: Dict[str, str]
    seq: int
    time_ms: int
    readings: Json
    command_id: str
    status: str
    kind: str
    at_ms: int


def decode(data: Union[bytes, bytearray, memoryview], kind: Optional[str] = None
           ) -> Tuple[str, Json]:
    """Decodes an SDK message: returns ``(type name, dict)``.

    ``kind`` is a topic suffix (``"ack"``, ``"shadow/delta"``); without it
    every message type is tried. Raises ``ValueError`` when the bytes are no
    such message, ``TypeError`` when ``data`` is not bytes-like (an int
    would otherwise be taken as a count of zero bytes).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WrongType(f"decode() takes bytes, bytearray or memoryview, not {type(data).__name__}")
    name, text = describe(bytes(data), kind)
    return name, json.loads(text)


def _object(text: str) -> Json:
    """A JSON object the native part wrote (always an object)."""
    value: Json = json.loads(text)
    return value


def _path(p: Optional[PathLike]) -> Optional[str]:
    return None if p is None else os.fspath(p)


def _check_ints(value: Any, what: str, depth: int = 0) -> None:
    # JSON would carry an int past 64 bits, and the SDK would read it as a
    # float: refused here instead. The depth bound (the SDK accepts 16
    # levels) also stops a container that holds itself.
    if depth > 32:
        raise InvalidInput(f"{what}: nested too deep")
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise InvalidInput(f"{what}: {value} does not fit in 64 bits")
    if isinstance(value, dict):
        for v in value.values():
            _check_ints(v, what, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_ints(v, what, depth + 1)


def _state_json(state: Any, what: str) -> str:
    if not isinstance(state, dict):
        raise InvalidInput(f"{what} must be a dict of properties, not {type(state).__name__}")
    _check_ints(state, what)
    try:
        return json.dumps(state, allow_nan=False)
    except (TypeError, ValueError) as e:
        # bytes, sets, NaN...: nothing a shadow property can hold in JSON.
        raise InvalidInput(f"{what}: {e}") from None


class App:
    """An app connected to a twin host over MQTT (``lanyard twin``).

    State is a dict of properties; nested dicts are nested properties
    (``{"fan": {"speed": 0.5}}``); ``None`` in desired state deletes a
    property; lists are arrays. Values are what JSON holds: bytes a device
    reports come back as base64 text, as in the AWS JSON mapping.

    ``broker`` is ``mqtt://host:port``, or ``mqtts://host:port`` with
    ``ca`` (the PEM file of the CA that signed the broker's certificate)
    and, for mutual TLS, ``cert`` and ``key``; the same for ``Device`` and
    ``Bridge``. Every call blocks (Ctrl-C interrupts it); calls from several
    threads proceed at once (``lanyard.aio.App`` is the asyncio app). Errors: ``ValueError`` for
    input that cannot be sent (nothing is sent), ``TimeoutError`` when no
    answer comes in time, ``Rejected`` when the host refuses (an unknown
    device), ``OSError`` when the broker connection fails.

    ``operator`` names the app as the writer of its desired state,
    resolutions and re-provisionings (``lanyard twin --operators``: a host
    with an operator list refuses anyone else's, raising ``Rejected`` with
    the reason); give the identity the broker knows the client by.

    >>> app = App("mqtt://127.0.0.1:1883")                    # doctest: +SKIP
    >>> app.set_desired("ly-020000000001", {"led": {"on": True}})  # doctest: +SKIP
    >>> app.command("ly-020000000001", "read_sensor")            # doctest: +SKIP
    {'status': 'Succeeded', 'reason': None, 'result': {'humidity_pct': 45.0, ...}, ...}
    """

    def __init__(self, broker: str, client_id: Optional[str] = None, tenants: bool = False,
                 timeout: float = 10.0, ca: Optional[PathLike] = None,
                 cert: Optional[PathLike] = None, key: Optional[PathLike] = None,
                 operator: Optional[str] = None) -> None:
        self._app = _App(broker, client_id, tenants, float(timeout), _path(ca), _path(cert),
                         _path(key), operator)

    def close(self) -> None:
        """Waits up to a second for what was sent to reach the broker and
        disconnects; later calls raise ``RuntimeError``. ``with App(...) as
        app:`` closes at the end of the block."""
        self._app.close()

    def __enter__(self) -> "App":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_desired(self, device: str, state: Json) -> int:
        """Asks for ``state`` in ``device``'s desired state and returns the
        shadow's version once the twin host has applied it (it then sends
        the device its delta). Raises ``Rejected`` when the host refuses it,
        for instance more state than the device said it can hold."""
        return self._app.set_desired(device, state)

    def send_desired(self, device: str, state: Json) -> None:
        """Sends ``state`` for ``device``'s desired state without waiting
        for the twin host: no answer is asked for, so nothing here says
        whether it was applied (a refusal still comes as an event, and
        ``get_shadow`` shows the outcome). For a stream of writes at the
        broker's pace; ``close`` waits until the broker has them all. A
        device name that cannot be one raises ``ValueError`` before
        anything is sent."""
        self._app.send_desired(device, state)

    def get_shadow(self, device: str, timeout: float = 5.0) -> ShadowDocument:
        """The device's shadow: ``{"version", "desired", "reported",
        "in_sync", "rejected"}`` (``rejected``: each desired property the
        device refuses, dotted, to the reason's name)."""
        return cast(ShadowDocument, _object(self._app.get_shadow(device, float(timeout))))

    def list_devices(self, tenant: Optional[str] = None,
                     timeout: float = 10.0) -> List[DeviceSummary]:
        """The fleet's devices, as the twin host knows them: a list of
        ``{"device", "online", "state", "health", "firmware",
        "last_seen_ms", "version", "in_sync", "parked", "refused",
        "decommissioned"}`` in the order of their names (``parked``:
        conflicts waiting for an operator)."""
        devices: List[DeviceSummary] = json.loads(self._app.list_devices(tenant, float(timeout)))
        return devices

    def resolve(self, device: str, path: str, winner: str, timeout: float = 10.0) -> int:
        """Settles the conflict parked for an operator at ``path``
        (dotted) with the ``"cloud"``'s or the ``"device"``'s value;
        returns the shadow's version. Raises ``Rejected`` when nothing is
        parked there."""
        return self._app.resolve(device, path, winner, float(timeout))

    def revoke(self, device: str, reason: str = "compromised", decommission: bool = False,
               timeout: float = 10.0) -> int:
        """Revokes every certificate of ``device`` through the provisioning
        service, which has the broker refuse them (``decommission=True``:
        the device gets no new one either); returns how many were revoked.
        Raises ``Rejected`` for a device that was never issued one."""
        return self._app.revoke(device, reason, bool(decommission), float(timeout))

    def push_config(self, devices: List[str], version: int, fields: Json,
                    timeout: float = 30.0) -> ConfigPushReport:
        """Pushes configuration ``version`` changing ``fields`` (e.g.
        ``{"telemetry_ms": 60000}``; the others are kept) to ``devices``
        and counts their acknowledgements: ``{"applied": [...],
        "ignored": [[device, version it runs], ...], "rejected": [[device,
        why], ...], "unanswered": [...]}``."""
        return cast(ConfigPushReport, _object(self._app.push_config(
            list(devices), int(version), dict(fields), float(timeout))))

    def command(self, device: str, name: str, args: Optional[Json] = None,
                timeout: float = 10.0) -> CommandOutcome:
        """Sends a command and waits for its final acknowledgement:
        ``{"status": "Succeeded" | "Failed" | "Rejected", "reason": ...,
        "detail": str or None, "result": dict or None, "result_cbor": bytes
        or None}`` (``detail``: why, in the device's words, such as a
        Python handler's exception message; ``result`` when the device
        answered a map of properties, as devices do). The
        command expires on the device after ``timeout`` seconds too."""
        return _command_outcome(self._app.command(
            device, name, _state_json(args or {}, "command arguments"), float(timeout)))

    def next_event(self, timeout: float = 1.0) -> Optional[Event]:
        """The next event, or ``None`` after ``timeout`` seconds:
        ``{"type": "delta", "device", "state"}``,
        ``{"type": "reported", "device", "state", "rejected"}`` (``rejected``
        maps each desired property the device refuses, dotted, to the
        reason's name, such as ``"out_of_range"``) or
        ``{"type": "telemetry", "device", "seq", "time_ms", "readings"}``
        (``readings``: what the device measured, as a dict) or
        ``{"type": "ack", "device", "command_id", "status"}`` or
        ``{"type": "fleet", "device", "kind", "at_ms", ...}`` (what the twin
        host noticed: ``kind`` ``"online"``, ``"offline"`` with
        ``last_seen_ms``, ``"lifecycle"`` with ``from`` and ``to``, or
        ``"health"`` with ``status``)."""
        return _event(self._app.next_event(float(timeout)))

    @property
    def events_dropped(self) -> int:
        """Events ``next_event`` dropped because more than its queue holds
        (10,000) waited to be read: an app that stops reading does not
        grow without bound."""
        return self._app.events_dropped

    def events(self, devices: Optional[List[str]] = None, capacity: int = 1000) -> "Events":
        """A queue of its own for the events of ``devices`` (every device
        when ``None``), from now on, holding at most ``capacity`` unread;
        newer events are dropped and counted when its reader falls behind.
        Any number may be open; each gets every event it watches."""
        return Events(self._app.events(None if devices is None else list(devices),
                                       int(capacity)))


def _event(event: Optional[Tuple[str, str, str]]) -> Optional[Event]:
    """An event of the native part as the dict ``App.next_event`` returns."""
    if event is None:
        return None
    kind, device, text = event
    body = json.loads(text)
    if kind in ("ack", "reported", "telemetry", "fleet"):
        return cast(Event, {"type": kind, "device": device, **body})
    return {"type": kind, "device": device, "state": body}


def _command_outcome(
    answer: Tuple[str, Optional[str], Optional[str], Optional[bytes], Optional[str]]
) -> CommandOutcome:
    status, reason, result, cbor, detail = answer
    decoded = json.loads(result) if result is not None else None
    return {"status": status, "reason": reason, "detail": detail, "result": decoded,
            "result_cbor": cbor}


class Events:
    """The events of some devices (``App.events``), in a bounded queue:
    ``next(timeout)`` as ``App.next_event``; ``dropped`` counts the events
    it had no room for."""

    def __init__(self, queue: _EventQueue) -> None:
        self._queue = queue

    def next(self, timeout: Optional[float] = 1.0) -> Optional[Event]:
        """The next event, or ``None`` after ``timeout`` seconds (``None``:
        wait until one comes)."""
        return _event(self._queue.next(None if timeout is None else float(timeout)))

    @property
    def dropped(self) -> int:
        """Events dropped because the queue was full."""
        return self._queue.dropped


def _message(e: BaseException) -> str:
    """An exception as the acknowledgement's detail: its message, or its
    type's name when it has none (a ``KeyError``'s message is the key)."""
    text = str(e)
    if isinstance(e, KeyError) and e.args:
        text = f"missing {e.args[0]!r}"
    return text or type(e).__name__


def _update_key(key: Union[None, bytes, bytearray, PathLike]) -> Optional[bytes]:
    """The fleet's update key as bytes: from a ``.pub`` file, hex, or bytes."""
    if key is None or isinstance(key, (bytes, bytearray)):
        return None if key is None else bytes(key)
    text = os.fspath(key)
    if os.path.exists(text):
        with open(text) as f:
            text = f.read()
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise InvalidInput("update_key: a .pub file, 64 hex digits or 32 bytes") from None


class Device:
    """This host as a Lanyard device: the SDK's agent (lifecycle,
    registration, shadow, health, telemetry, commands with acknowledgements
    and dedupe, configuration) over MQTT, its state kept in ``state_dir``
    (resumed by the next ``Device`` on the same directory; messages the
    broker has not acknowledged are journalled there and sent first).

    - ``commands``: ``{name: handler}``; a handler gets the arguments as a
      dict and returns a dict of properties (the result) or ``None``. It
      raising ``ValueError``, ``TypeError`` or ``KeyError`` acknowledges the
      command as Rejected (bad arguments), anything else as Failed; the
      exception's message goes with the acknowledgement (``detail``, cut
      to 120 bytes) and to the ``lanyard`` logger. Other names are
      Rejected as unknown; ``blink_led`` and ``read_sensor`` are the
      board's (through ``blink`` and ``sensors``), ``diagnostics`` and the
      lifecycle's commands the agent's own.
    - ``sensors``: returns ``(temperature °C, humidity %)`` or ``None`` when
      the read failed (telemetry, ``read_sensor``, health's data age).
    - ``battery_mv``: returns the battery voltage in millivolts (a single
      Li-ion cell, 3 300-4 150 mV) or ``None``; without it the host is on
      mains and always full.
    - ``blink``: called with ``(count, period_ms)`` by ``blink_led``.
    - ``aws=True``: the shadow lives in AWS IoT Core's shadow service
      (``$aws/things/{device id}/shadow/...``, JSON documents; the named
      shadow ``shadow_name`` if given) instead of a Lanyard twin host. With
      no twin host to apply the fleet's conflict policies, they are applied
      here: ``policies`` maps dotted property paths to ``"cloud_wins"``,
      ``"device_wins"``, ``"latest_wins"`` or ``"manual_resolve"`` (the key
      ``"*"`` for every other property; cloud wins if not given). A
      property the device wins has its value written back as desired.
    - ``claim_cert``, ``claim_key``, ``provision_port``: provisioning by
      claim (``docs/provisioning.md``). The device makes its own key pair
      and gets its own certificate from the fleet's provisioning service
      on the broker's provisioning listener (``provision_port``), with
      ``hardware`` (default: the MAC) as the allow-list names it; it keeps
      them in ``state_dir`` (encrypted), uses them on later starts, and
      renews the certificate while it runs (``certificate`` says which it
      uses). Needs ``ca`` and an ``mqtts://`` broker. A refusal raises
      ``PermissionError`` with the reason, an unreachable service
      ``ConnectionError``.
    - ``update_key``: take firmware updates signed with the fleet's key
      (``lanyard ota keygen``'s ``.pub`` file, its hex, or 32 bytes;
      ``docs/ota.md``). ``firmware_version`` is the version this build
      reports and updates compare against. A verified image is written to
      ``slot/`` in ``state_dir`` (``image.bin`` and ``image-b.bin`` in turn:
      after a confirmed update the next goes to the other file) and
      ``on_update(path, "trial")`` is called with its path: restart the
      process on it. There, ``self_test()`` (default:
      passes) confirms it; if it returns false, ``on_update(path,
      "reverted")`` says to go back to the old image.

    Callables run in the SDK's threads, with the GIL, while ``run`` runs:
    keep them short.

    >>> dev = Device("mqtt://127.0.0.1:1883", "02:00:00:00:00:cc", "/var/lib/gw",
    ...              commands={"restart_service": restart}, sensors=read_sht31)  # doctest: +SKIP
    >>> dev.report("uplink", "lte")                                 # doctest: +SKIP
    >>> dev.run(on_event=print)                                     # doctest: +SKIP
    """

    def __init__(self, broker: str, mac: str, state_dir: PathLike,
                 commands: Optional[Dict[str, Callable[[Json], Optional[Json]]]] = None,
                 sensors: Optional[Callable[[], Optional[Tuple[float, float]]]] = None,
                 battery_mv: Optional[Callable[[], Optional[int]]] = None,
                 blink: Optional[Callable[[int, int], None]] = None,
                 tenant: Optional[str] = None, ca: Optional[PathLike] = None,
                 cert: Optional[PathLike] = None, key: Optional[PathLike] = None,
                 aws: bool = False, shadow_name: Optional[str] = None,
                 policies: Optional[Dict[str, str]] = None,
                 claim_cert: Optional[PathLike] = None, claim_key: Optional[PathLike] = None,
                 provision_port: Optional[int] = None, hardware: Optional[str] = None,
                 update_key: Union[None, bytes, bytearray, PathLike] = None,
                 firmware_version: Optional[str] = None,
                 on_update: Optional[Callable[[str, str], None]] = None,
                 self_test: Optional[Callable[[], bool]] = None) -> None:
        handlers = dict(commands or {})

        def dispatch(name: str, args_json: str) -> Tuple[str, Optional[str]]:
            handler = handlers.get(name)
            if handler is None:
                return ("unknown", None)
            try:
                result = handler(json.loads(args_json))
            except (ValueError, TypeError, KeyError) as e:
                _log.info("command %s refused: %r", name, e)
                return ("bad_arguments", _message(e))
            except Exception as e:
                _log.exception("command %s failed", name)
                return ("failed", _message(e))
            if result is None:
                return ("ok", None)
            if not isinstance(result, dict):
                _log.error("command %s returned %s, not a dict", name, type(result).__name__)
                return ("failed", None)
            try:
                return ("ok", json.dumps(result, allow_nan=False))
            except (TypeError, ValueError):
                _log.exception("command %s returned what JSON cannot hold", name)
                return ("failed", None)

        self._device = _Device(broker, mac, os.fspath(state_dir), dispatch if handlers else None,
                               sensors, battery_mv, blink, tenant, _path(ca), _path(cert),
                               _path(key), aws, shadow_name, policies, _path(claim_cert),
                               _path(claim_key), provision_port, hardware,
                               _update_key(update_key), firmware_version, on_update, self_test)

    @property
    def device_id(self) -> str:
        """The device id, derived from the MAC address (``ly-...``)."""
        return self._device.device_id

    @property
    def certificate(self) -> Optional[Tuple[str, int]]:
        """For a device provisioned by claim, ``(serial, not_after)`` of
        the certificate it uses now (it changes as the device renews it);
        ``None`` otherwise."""
        return self._device.certificate

    def report(self, path: str, value: Union[bool, int, float, str]) -> None:
        """Reports ``value`` (bool, int, float or str) at the dotted
        ``path`` of the shadow; from any thread, sent once ``run`` runs."""
        self._device.report(path, value)

    def run(self, seconds: Optional[float] = None,
            on_event: Optional[Callable[[Json], None]] = None) -> None:
        """Connects and runs until the device is decommissioned, ``seconds``
        pass, or Ctrl-C. ``on_event`` gets a dict per event, in this
        thread: ``{"type": "sent" | "received", "kind", "message"}`` (the
        message decoded as by ``decode``), ``{"type": "state", "from",
        "to"}``, ``"health"``, ``"config"``, ``"desired_applied"``,
        ``"command"``, ``"refused"``, ``"reconnected"``. An exception from
        ``on_event`` (or Ctrl-C) stops the device and propagates; what it
        had not sent stays journalled in ``state_dir``. A failed broker
        connection raises ``OSError``. Runs once; a new ``Device`` on the
        same ``state_dir`` resumes."""
        callback: Optional[Callable[[str, str], None]] = None
        if on_event is not None:
            handler = on_event

            def forward(kind: str, text: str) -> None:
                handler({"type": kind, **json.loads(text)})
            callback = forward
        self._device.run(None if seconds is None else float(seconds), callback)


class ShadowRejected(Rejected):
    """A shadow update or read refused as AWS IoT refuses it: ``code``
    (400 malformed, 404 no such shadow, 409 version conflict, 413 too
    large), ``message`` (AWS IoT's words) and ``document`` (what AWS IoT
    publishes on ``/rejected``). Nothing changed."""

    def __init__(self, code: int, message: str, document: Optional[Json] = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.document = document if document is not None else {"code": code, "message": message}


class VersionConflict(ShadowRejected):
    """The update named a version that is not the shadow's (code 409)."""


def _shadow_refusal(code: int, message: str, document: Optional[Json] = None) -> ShadowRejected:
    cls = VersionConflict if code == 409 else ShadowRejected
    return cls(code, message, document)


class Shadow:
    """A shadow document kept in this process, by the same engine the twin
    host runs: desired and reported state, the delta between them, a
    version that every write increases, and conflict policies per property
    path, for gateways and services that keep shadows themselves.

    State is a dict of properties as in ``App``: nested dicts are nested
    properties, ``None`` deletes, lists are arrays replaced whole.

    ``policies`` maps dotted property paths to ``"cloud_wins"``,
    ``"device_wins"``, ``"latest_wins"`` or ``"manual_resolve"`` (the
    longest matching path decides; ``default_policy`` covers the rest).
    A conflict is a property both sides changed, to different values,
    since they last agreed; each write settles the ones it made:
    ``cloud_wins`` keeps desired (the delta asks the device again),
    ``device_wins`` takes the reported value into desired,
    ``latest_wins`` takes the later write (the cloud's within
    ``skew_tolerance_ms``), ``manual_resolve`` parks it for ``resolve``
    (the delta leaves it out meanwhile). ``last_conflicts`` lists what the
    last write settled. With ``cloud_wins`` everywhere (the default)
    desired state is only ever what was written to it, and ``update`` and
    ``get`` behave as AWS IoT's shadow service does.

    >>> s = Shadow()
    >>> s.update({"state": {"desired": {"color": "red"}}})["version"]
    1
    >>> s.update({"state": {"reported": {"color": "blue"}}})["version"]
    2
    >>> s.get()["state"]["delta"]
    {'color': 'red'}
    >>> s.update({"state": {"desired": {"color": None}}, "version": 1})
    Traceback (most recent call last):
    ...
    lanyard.VersionConflict: 409: Version conflict
    """

    def __init__(self, policies: Optional[Dict[str, str]] = None,
                 default_policy: str = "cloud_wins", skew_tolerance_ms: int = 1000) -> None:
        if policies is not None and not isinstance(policies, dict):
            raise WrongType("policies must be a dict of dotted path -> policy name")
        self._s = _Shadow(list((policies or {}).items()), default_policy, int(skew_tolerance_ms))

    @property
    def version(self) -> int:
        """The document's version: 0 before the first write."""
        return self._s.version

    def update(self, request: Union[Json, str, bytes], now_ms: Optional[int] = None) -> Json:
        """Applies an AWS IoT shadow update request (``{"state":
        {"desired": {...}, "reported": {...}}, "version": N, "clientToken":
        "..."}``, as a dict or as the JSON text an AWS IoT update topic
        carries) and returns what AWS IoT publishes on
        ``/update/accepted``. Refused (nothing changes), raises
        ``VersionConflict`` or ``ShadowRejected`` with the code and message
        AWS IoT publishes on ``/update/rejected``. ``now_ms`` is the time
        of the write (the clock's when ``None``): metadata timestamps and
        ``latest_wins`` use it."""
        if not isinstance(request, (dict, str, bytes)):
            raise WrongType(f"an update request is a dict or JSON text, not {type(request).__name__}")
        ok, doc = self._s.update_aws(request, now_ms)
        if not ok:
            raise _shadow_refusal(doc["code"], doc["message"], doc)
        return doc

    def get(self, client_token: Optional[str] = None, now_ms: Optional[int] = None) -> Json:
        """What AWS IoT publishes on ``/get/accepted``: ``state`` (desired,
        reported, delta), ``metadata`` (a timestamp per property),
        ``version``, ``timestamp``. Before the first write there is no
        shadow: ``ShadowRejected`` with code 404, as AWS IoT answers."""
        ok, doc = self._s.get_aws(client_token, now_ms)
        if not ok:
            raise _shadow_refusal(doc["code"], doc["message"], doc)
        return doc

    def _write(self, method: Callable[[Json, Optional[int], Optional[int]], Tuple[int, Optional[str]]],
               state: Json, version: Optional[int], now_ms: Optional[int]) -> int:
        n, refused = method(state, version, now_ms)
        if refused is not None:
            raise _shadow_refusal(n, refused)
        return n

    @property
    def last_conflicts(self) -> List[Json]:
        """The conflicts the last accepted write settled (or parked): a
        dict each with ``path``, ``policy``, ``winner`` (``"cloud"``,
        ``"device"``, or ``None`` when parked) and both values."""
        conflicts: List[Json] = self._s.last_conflicts()
        return conflicts

    def update_desired(self, state: Json, version: Optional[int] = None,
                       now_ms: Optional[int] = None) -> int:
        """Writes desired state, as the cloud; with ``version``, only if it
        is the shadow's; at ``now_ms`` (the clock's when ``None``). Returns
        the new version."""
        return self._write(self._s.update_desired, state, version, now_ms)

    def update_reported(self, state: Json, version: Optional[int] = None,
                        now_ms: Optional[int] = None) -> int:
        """Writes reported state, as the device. See ``update_desired``."""
        return self._write(self._s.update_reported, state, version, now_ms)

    @property
    def desired(self) -> Json:
        """Desired state, a dict."""
        return self._s.desired()

    @property
    def reported(self) -> Json:
        """Reported state, a dict."""
        return self._s.reported()

    @property
    def delta(self) -> Json:
        """The desired properties whose reported value differs or is
        missing, less the conflicts parked for an operator."""
        result: Json = self._s.delta()
        return result

    def parked(self) -> List[Tuple[str, int]]:
        """Conflicts waiting for ``resolve``: a list of ``(dotted path,
        parked at ms)``."""
        return self._s.parked()

    def resolve(self, path: str, winner: str, now_ms: Optional[int] = None) -> int:
        """Settles the conflict parked at ``path``: ``winner`` is
        ``"cloud"`` (desired stands; the delta asks the device for it) or
        ``"device"`` (the reported value becomes desired). Returns the
        version. ``KeyError`` when nothing is parked there."""
        return self._s.resolve(path, winner, now_ms)

    def conflict_counts(self) -> Dict[str, int]:
        """Conflicts settled so far: by policy, and how many each side
        won."""
        return dict(self._s.conflict_counts())

    def policy_for(self, path: str) -> str:
        """The policy that applies to a dotted path."""
        return self._s.policy_for(path)
