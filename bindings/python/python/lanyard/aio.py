"""Lanyard for asyncio: the app of a twin host, the device and the
gateway bridge, for code that runs in an event loop.

``App``'s calls are awaitables that run on the SDK's own (Rust) runtime
and never block the event loop; calls from several tasks proceed at once,
and cancelling the task that awaits one (``asyncio.wait_for``,
``task.cancel()``) drops the call: the answer it waited for, if it comes,
is then an event. Events are read with ``async for``::

    import asyncio, lanyard.aio

    async def main() -> None:
        async with await lanyard.aio.App.connect("mqtt://127.0.0.1:1883") as app:
            await app.set_desired("ly-020000000001", {"led": {"on": True}})
            async for event in app.events(["ly-020000000001"]):
                print(event)

    asyncio.run(main())

``Device`` and ``Bridge`` run in a worker thread (their loops are the
SDK's), awaited like any coroutine; what they raise, and their arguments,
are those of ``lanyard.Device`` and ``lanyard.Bridge``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Dict, List, Optional, TypeVar, Union, cast

from . import (CommandOutcome, ConfigPushReport, DeviceSummary, Event, Json, PathLike,
               ShadowDocument, _command_outcome, _event, _object, _path, _state_json)
from . import Device as _Device
from ._lanyard import AsyncApp as _AsyncApp
from ._lanyard import Bridge as _Bridge
from ._lanyard import EventQueue as _EventQueue
from ._lanyard import StopSignal

T = TypeVar("T")

__all__ = ["App", "Bridge", "Device", "Events"]


class Events:
    """The events of some devices (``App.events``) as an async iterator,
    in a bounded queue: ``dropped`` counts the events it had no room for.
    The iteration ends when the app is closed."""

    def __init__(self, queue: _EventQueue) -> None:
        self._queue = queue

    def __aiter__(self) -> "Events":
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        if event is None:
            raise StopAsyncIteration
        return event

    async def next(self) -> Optional[Event]:
        """The next event; ``None`` once the app is closed. Cancel-safe:
        an event is never lost to a wait given up."""
        return _event(await self._queue.next())

    @property
    def dropped(self) -> int:
        """Events dropped because the queue was full."""
        return self._queue.dropped


class App:
    """``lanyard.App`` for asyncio; make one with ``await
    App.connect(...)`` (same arguments). Every method is the blocking
    app's, awaitable, raising the same errors."""

    def __init__(self, native: _AsyncApp) -> None:
        self._app = native

    @classmethod
    async def connect(cls, broker: str, client_id: Optional[str] = None, tenants: bool = False,
                      timeout: float = 10.0, ca: Optional[PathLike] = None,
                      cert: Optional[PathLike] = None, key: Optional[PathLike] = None,
                      operator: Optional[str] = None) -> "App":
        """Connects within ``timeout`` seconds (``lanyard.App``'s
        arguments)."""
        native = await _AsyncApp.connect(broker, client_id, tenants, float(timeout), _path(ca),
                                         _path(cert), _path(key), operator)
        return cls(native)

    async def close(self) -> None:
        """Waits up to a second for what was sent to reach the broker and
        disconnects; later calls raise ``lanyard.Closed``, and event
        iterations end."""
        await self._app.close()

    async def __aenter__(self) -> "App":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def set_desired(self, device: str, state: Json) -> int:
        """``lanyard.App.set_desired``."""
        version: int = await self._app.set_desired(device, state)
        return version

    async def send_desired(self, device: str, state: Json) -> None:
        """``lanyard.App.send_desired``."""
        await self._app.send_desired(device, state)

    async def get_shadow(self, device: str, timeout: float = 5.0) -> ShadowDocument:
        """``lanyard.App.get_shadow``."""
        return cast(ShadowDocument, _object(await self._app.get_shadow(device, float(timeout))))

    async def list_devices(self, tenant: Optional[str] = None,
                           timeout: float = 10.0) -> List[DeviceSummary]:
        """``lanyard.App.list_devices``."""
        devices: List[DeviceSummary] = json.loads(await self._app.list_devices(tenant, float(timeout)))
        return devices

    async def resolve(self, device: str, path: str, winner: str, timeout: float = 10.0) -> int:
        """``lanyard.App.resolve``."""
        version: int = await self._app.resolve(device, path, winner, float(timeout))
        return version

    async def revoke(self, device: str, reason: str = "compromised", decommission: bool = False,
                     timeout: float = 10.0) -> int:
        """``lanyard.App.revoke``."""
        revoked: int = await self._app.revoke(device, reason, bool(decommission), float(timeout))
        return revoked

    async def push_config(self, devices: List[str], version: int, fields: Json,
                          timeout: float = 30.0) -> ConfigPushReport:
        """``lanyard.App.push_config``."""
        return cast(ConfigPushReport, _object(await self._app.push_config(
            list(devices), int(version), dict(fields), float(timeout))))

    async def command(self, device: str, name: str, args: Optional[Json] = None,
                      timeout: float = 10.0) -> CommandOutcome:
        """``lanyard.App.command``."""
        return _command_outcome(await self._app.command(
            device, name, _state_json(args or {}, "command arguments"), float(timeout)))

    async def next_event(self, timeout: Optional[float] = None) -> Optional[Event]:
        """``lanyard.App.next_event``; without ``timeout``, waits until an
        event comes."""
        return _event(await self._app.next_event(None if timeout is None else float(timeout)))

    @property
    def events_dropped(self) -> int:
        """``lanyard.App.events_dropped``."""
        dropped: int = self._app.events_dropped
        return dropped

    def events(self, devices: Optional[List[str]] = None, capacity: int = 1000) -> Events:
        """``lanyard.App.events``, read with ``async for``."""
        return Events(self._app.events(None if devices is None else list(devices),
                                       int(capacity)))


class Device:
    """``lanyard.Device`` for asyncio (same arguments): ``await
    device.run(seconds)`` runs it in a worker thread, its callables
    (commands, sensors) called in that thread and ``on_event`` in the
    event loop's. Cancelling the task that awaits ``run`` stops the
    device within a fifth of a second, as Ctrl-C does (what it had not
    sent stays journalled)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._device = _Device(*args, **kwargs)

    @property
    def device_id(self) -> str:
        """``lanyard.Device.device_id``."""
        return self._device.device_id

    def report(self, path: str, value: Union[bool, int, float, str]) -> None:
        """``lanyard.Device.report`` (does not block)."""
        self._device.report(path, value)

    async def run(self, seconds: Optional[float] = None,
                  on_event: Optional[Callable[[Json], None]] = None) -> None:
        """``lanyard.Device.run``, awaited."""
        loop = asyncio.get_running_loop()
        forward: Optional[Callable[[str, str], None]] = None
        if on_event is not None:
            handler = on_event

            def forward(kind: str, text: str) -> None:
                loop.call_soon_threadsafe(handler, {"type": kind, **json.loads(text)})

        native = self._device._device
        limit = None if seconds is None else float(seconds)
        await _in_thread(lambda stop: native.run(limit, forward, stop))


class Bridge:
    """``lanyard.Bridge`` for asyncio (same arguments): ``await
    bridge.run_tcp(address)`` bridges in a worker thread; cancelling the
    task that awaits it stops the bridge within a fifth of a second."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._bridge = _Bridge(*args, **kwargs)

    async def run_tcp(self, address: str, seconds: Optional[float] = None) -> Dict[str, int]:
        """``lanyard.Bridge.run_tcp``, awaited: its counters."""
        limit = None if seconds is None else float(seconds)
        stats: Dict[str, int] = await _in_thread(
            lambda stop: self._bridge.run_tcp(address, limit, stop))
        return stats


async def _in_thread(work: Callable[[StopSignal], T]) -> T:
    """Runs ``work(stop)`` in a worker thread. When the awaiting task is
    cancelled, ``stop`` is set (the SDK's loop notices it as it notices
    Ctrl-C) and the cancellation waits for the work to end, so that
    nothing keeps running once ``run`` is cancelled."""
    stop = StopSignal()
    task = asyncio.ensure_future(asyncio.to_thread(work, stop))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        try:
            await task
        except Exception:
            pass  # the stop itself, reported as an error of the run
        raise
