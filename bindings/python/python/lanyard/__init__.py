"""Lanyard for Python gateways.

A thin layer over the Rust SDK (the ``_lanyard`` extension): it adds no
rules, only Python idioms (dicts instead of JSON text).

- ``decode(data, kind=None)``: any SDK message as ``(type, dict)``.
- ``encode_frame(topic, message)`` and ``FrameDecoder``: the framed serial
  link between a device and its gateway (COBS frames with a CRC-16, each
  carrying ``[topic, message]``).
- ``Bridge``: the gateway bridge of ``lanyard bridge``, a device's serial
  link to an MQTT broker.
"""

import json

from ._lanyard import Bridge, FrameDecoder, describe, encode_frame

__all__ = ["Bridge", "FrameDecoder", "decode", "encode_frame"]


def decode(data, kind=None):
    """Decodes an SDK message: returns ``(type name, dict)``.

    ``kind`` is a topic suffix (``"ack"``, ``"shadow/delta"``); without it
    every message type is tried. Raises ``ValueError`` when the bytes are no
    such message.
    """
    name, text = describe(bytes(data), kind)
    return name, json.loads(text)
