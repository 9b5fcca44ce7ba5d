"""Types of the native part of the ``lanyard`` package (``src/*.rs``).
The public API is ``lanyard/__init__.py``, which wraps these; the test
command checks this file against the built module with ``mypy.stubtest``."""

import os
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union, final

__all__ = [
    "describe",
    "encode_frame",
    "FrameDecoder",
    "Bridge",
    "App",
    "AsyncApp",
    "EventQueue",
    "StopSignal",
    "Device",
    "Shadow",
    "LanyardError",
    "Rejected",
]

_Path = Union[str, "os.PathLike[str]"]
_Event = Tuple[str, str, str]
_FinalAck = Tuple[str, Optional[str], Optional[str], Optional[bytes], Optional[str]]

class LanyardError(Exception): ...
class Rejected(LanyardError): ...

def describe(data: bytes, kind: Optional[str] = None) -> Tuple[str, str]: ...
def encode_frame(topic: str, message: bytes) -> bytes: ...

@final
class FrameDecoder:
    def __new__(cls) -> "FrameDecoder": ...
    def feed(self, data: bytes) -> List[Tuple[str, str, bytes]]: ...
    def stats(self) -> Dict[str, int]: ...

@final
class Bridge:
    def __new__(
        cls,
        broker: str,
        device_id: Optional[str] = None,
        tenant: Optional[str] = None,
        ca: Optional[_Path] = None,
        cert: Optional[_Path] = None,
        key: Optional[_Path] = None,
        fog_window_s: Optional[float] = None,
        dead_band: float = 0.0,
    ) -> "Bridge": ...
    def run_tcp(
        self, address: str, seconds: Optional[float] = None, stop: Optional["StopSignal"] = None
    ) -> Dict[str, Any]: ...

@final
class StopSignal:
    def __new__(cls) -> "StopSignal": ...
    def set(self) -> None: ...

@final
class EventQueue:
    # Blocking app: the event or None; asyncio app: an awaitable of it.
    def next(self, timeout: Optional[float] = None) -> Any: ...
    @property
    def dropped(self) -> int: ...

@final
class App:
    def __new__(
        cls,
        broker: str,
        client_id: Optional[str] = None,
        tenants: bool = False,
        timeout: float = 10.0,
        ca: Optional[_Path] = None,
        cert: Optional[_Path] = None,
        key: Optional[_Path] = None,
        operator: Optional[str] = None,
    ) -> "App": ...
    def close(self) -> None: ...
    def set_desired(self, device: str, state: Dict[str, Any]) -> int: ...
    def send_desired(self, device: str, state: Dict[str, Any]) -> None: ...
    def get_shadow(self, device: str, timeout: float) -> str: ...
    def list_devices(self, tenant: Optional[str] = None, timeout: float = 10.0) -> str: ...
    def resolve(self, device: str, path: str, winner: str, timeout: float = 10.0) -> int: ...
    def revoke(
        self, device: str, reason: str, decommission: bool, timeout: float = 10.0
    ) -> int: ...
    def push_config(
        self, devices: List[str], version: int, fields: Dict[str, int], timeout: float = 30.0
    ) -> str: ...
    def command(self, device: str, name: str, args_json: str, timeout: float) -> _FinalAck: ...
    def next_event(self, timeout: float) -> Optional[_Event]: ...
    @property
    def events_dropped(self) -> int: ...
    def events(self, devices: Optional[List[str]] = None, capacity: int = 1000) -> EventQueue: ...

@final
class AsyncApp:
    @staticmethod
    def connect(
        broker: str,
        client_id: Optional[str] = None,
        tenants: bool = False,
        timeout: float = 10.0,
        ca: Optional[_Path] = None,
        cert: Optional[_Path] = None,
        key: Optional[_Path] = None,
        operator: Optional[str] = None,
    ) -> Awaitable["AsyncApp"]: ...
    def close(self) -> Awaitable[None]: ...
    def set_desired(self, device: str, state: Dict[str, Any]) -> Awaitable[int]: ...
    def send_desired(self, device: str, state: Dict[str, Any]) -> Awaitable[None]: ...
    def get_shadow(self, device: str, timeout: float) -> Awaitable[str]: ...
    def list_devices(
        self, tenant: Optional[str] = None, timeout: float = 10.0
    ) -> Awaitable[str]: ...
    def resolve(
        self, device: str, path: str, winner: str, timeout: float = 10.0
    ) -> Awaitable[int]: ...
    def revoke(
        self, device: str, reason: str, decommission: bool, timeout: float = 10.0
    ) -> Awaitable[int]: ...
    def push_config(
        self, devices: List[str], version: int, fields: Dict[str, int], timeout: float = 30.0
    ) -> Awaitable[str]: ...
    def command(
        self, device: str, name: str, args_json: str, timeout: float
    ) -> Awaitable[_FinalAck]: ...
    def next_event(self, timeout: Optional[float] = None) -> Awaitable[Optional[_Event]]: ...
    @property
    def events_dropped(self) -> int: ...
    def events(self, devices: Optional[List[str]] = None, capacity: int = 1000) -> EventQueue: ...

@final
class Device:
    def __new__(
        cls,
        broker: str,
        mac: str,
        state_dir: _Path,
        dispatch: Optional[Callable[[str, str], Tuple[str, Optional[str]]]] = None,
        sensors: Optional[Callable[[], Optional[Tuple[float, float]]]] = None,
        battery: Optional[Callable[[], Optional[int]]] = None,
        blink: Optional[Callable[[int, int], None]] = None,
        tenant: Optional[str] = None,
        ca: Optional[_Path] = None,
        cert: Optional[_Path] = None,
        key: Optional[_Path] = None,
        aws: bool = False,
        shadow_name: Optional[str] = None,
        policies: Optional[Dict[str, str]] = None,
        claim_cert: Optional[_Path] = None,
        claim_key: Optional[_Path] = None,
        provision_port: Optional[int] = None,
        hardware: Optional[str] = None,
        update_key: Optional[bytes] = None,
        firmware_version: Optional[str] = None,
        on_update: Optional[Callable[[str, str], None]] = None,
        self_test: Optional[Callable[[], bool]] = None,
    ) -> "Device": ...
    @property
    def device_id(self) -> str: ...
    @property
    def certificate(self) -> Optional[Tuple[str, int]]: ...
    def report(self, path: str, value: Union[bool, int, float, str]) -> None: ...
    def run(
        self,
        seconds: Optional[float] = None,
        on_event: Optional[Callable[[str, str], None]] = None,
        stop: Optional[StopSignal] = None,
    ) -> None: ...

@final
class Shadow:
    def __new__(
        cls,
        policies: Optional[List[Tuple[str, str]]] = None,
        default_policy: str = "cloud_wins",
        skew_tolerance_ms: int = 1000,
    ) -> "Shadow": ...
    @property
    def version(self) -> int: ...
    def update_aws(
        self, request: Union[Dict[str, Any], str, bytes], now_ms: Optional[int] = None
    ) -> Tuple[bool, Dict[str, Any]]: ...
    def get_aws(
        self, client_token: Optional[str] = None, now_ms: Optional[int] = None
    ) -> Tuple[bool, Dict[str, Any]]: ...
    def update_desired(
        self, state: Dict[str, Any], version: Optional[int] = None, now_ms: Optional[int] = None
    ) -> Tuple[int, Optional[str]]: ...
    def update_reported(
        self, state: Dict[str, Any], version: Optional[int] = None, now_ms: Optional[int] = None
    ) -> Tuple[int, Optional[str]]: ...
    def last_conflicts(self) -> List[Dict[str, Any]]: ...
    def desired(self) -> Dict[str, Any]: ...
    def reported(self) -> Dict[str, Any]: ...
    def delta(self) -> Dict[str, Any]: ...
    def parked(self) -> List[Tuple[str, int]]: ...
    def resolve(self, path: str, winner: str, now_ms: Optional[int] = None) -> int: ...
    def conflict_counts(self) -> List[Tuple[str, int]]: ...
    def policy_for(self, path: str) -> str: ...
