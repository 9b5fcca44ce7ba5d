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
  their acknowledgements, events.
"""

import json

from ._lanyard import App as _App
from ._lanyard import Bridge, FrameDecoder, Rejected, describe, encode_frame

__all__ = ["App", "Bridge", "FrameDecoder", "Rejected", "decode", "encode_frame"]


def decode(data, kind=None):
    """Decodes an SDK message: returns ``(type name, dict)``.

    ``kind`` is a topic suffix (``"ack"``, ``"shadow/delta"``); without it
    every message type is tried. Raises ``ValueError`` when the bytes are no
    such message.
    """
    name, text = describe(bytes(data), kind)
    return name, json.loads(text)


def _state_json(state, what):
    if not isinstance(state, dict):
        raise ValueError(f"{what} must be a dict of properties, not {type(state).__name__}")
    try:
        return json.dumps(state, allow_nan=False)
    except (TypeError, ValueError) as e:
        # bytes, sets, NaN...: nothing a shadow property can hold in JSON.
        raise ValueError(f"{what}: {e}") from None


class App:
    """An app connected to a twin host over MQTT (``lanyard twin``).

    State is a dict of properties; nested dicts are nested properties
    (``{"fan": {"speed": 0.5}}``); ``None`` in desired state deletes a
    property; lists are arrays. Values are what JSON holds: bytes a device
    reports come back as base64 text, as in the AWS JSON mapping.

    Every call blocks (Ctrl-C interrupts it). Errors: ``ValueError`` for
    input that cannot be sent (nothing is sent), ``TimeoutError`` when no
    answer comes in time, ``Rejected`` when the host refuses (an unknown
    device), ``OSError`` when the broker connection fails.

    >>> app = App("mqtt://127.0.0.1:1883")                    # doctest: +SKIP
    >>> app.set_desired("ly-020000000001", {"led": {"on": True}})  # doctest: +SKIP
    >>> app.command("ly-020000000001", "blink_led", {"count": 2})  # doctest: +SKIP
    {'status': 'Succeeded', 'reason': None, 'result': None}
    """

    def __init__(self, broker, client_id=None, tenants=False, timeout=10.0):
        self._app = _App(broker, client_id, tenants, float(timeout))

    def set_desired(self, device, state):
        """Asks for ``state`` in ``device``'s desired state; the host
        answers the device with a delta."""
        self._app.set_desired(device, _state_json(state, "desired state"))

    def get_shadow(self, device, timeout=5.0):
        """The device's shadow: ``{"version", "desired", "reported",
        "in_sync"}``."""
        return json.loads(self._app.get_shadow(device, float(timeout)))

    def command(self, device, name, args=None, timeout=10.0):
        """Sends a command and waits for its final acknowledgement:
        ``{"status": "Succeeded" | "Failed" | "Rejected", "reason": ...,
        "result": CBOR bytes or None}``. The command expires on the device
        after ``timeout`` seconds too."""
        status, reason, result = self._app.command(
            device, name, _state_json(args or {}, "command arguments"), float(timeout)
        )
        return {"status": status, "reason": reason, "result": result}

    def next_event(self, timeout=1.0):
        """The next event, or ``None`` after ``timeout`` seconds:
        ``{"type": "delta" | "reported", "device", "state"}`` or
        ``{"type": "ack", "device", "command_id", "status"}``."""
        event = self._app.next_event(float(timeout))
        if event is None:
            return None
        kind, device, text = event
        body = json.loads(text)
        if kind == "ack":
            return {"type": kind, "device": device, **body}
        return {"type": kind, "device": device, "state": body}
