"""The transport seam: how the round engine sends and receives envelopes, and an in-memory twin.

The aggregator's engine talks to a :class:`ServerTransport`, each silo to a
:class:`ClientTransport`. Production uses ZeroMQ (``aggregator.server``, ``silo.client``);
tests use :class:`InMemoryNetwork`, which still runs every message through
:mod:`fedalign.protocol.wire` so the bytes that would cross the network are exactly the ones tested.

A server transport returns only envelopes whose ``sender`` equals the authenticated peer
(the CURVE key's silo under ZeroMQ, the attached name here); anything else raises
:class:`ProtocolError` from ``recv`` and the engine logs and drops it.
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
import time
from typing import Mapping, Protocol, runtime_checkable

from fedalign.protocol.errors import ProtocolError
from fedalign.protocol.wire import DEFAULT_MAX_BYTES, Envelope, decode, encode, payload_nbytes

__all__ = [
    "AGGREGATOR",
    "ServerTransport",
    "ClientTransport",
    "Traffic",
    "InMemoryNetwork",
    "check_sender",
]

AGGREGATOR = "aggregator"


class Traffic:
    """Bytes on the wire per peer and direction (header + array frames, before encryption)."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def add_sent(self, peer: str, n: int) -> None:
        with self._lock:
            self.sent[peer] += n

    def add_received(self, peer: str, n: int) -> None:
        with self._lock:
            self.received[peer] += n

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"sent": dict(self.sent), "received": dict(self.received)}


@runtime_checkable
class ServerTransport(Protocol):
    """The aggregator's end: talks to silos by name."""

    traffic: Traffic

    def send(self, to: str, env: Envelope) -> int:
        """Queue ``env`` for silo ``to``; returns the bytes it occupies. Unknown peers drop it."""

    def recv(self, timeout_s: float) -> Envelope | None:
        """The next authenticated envelope, or None after ``timeout_s``."""

    def close(self) -> None: ...


@runtime_checkable
class ClientTransport(Protocol):
    """A silo's end: talks to the aggregator only."""

    name: str
    traffic: Traffic

    def send(self, env: Envelope) -> int: ...

    def recv(self, timeout_s: float) -> Envelope | None: ...

    def close(self) -> None: ...


def check_sender(env: Envelope, authenticated: str) -> Envelope:
    """``env`` if its claimed sender is the authenticated peer; :class:`ProtocolError` otherwise."""
    if env.sender != authenticated:
        raise ProtocolError(
            f"message {type(env.message).__name__} claims sender {env.sender!r} "
            f"but arrived authenticated as {authenticated!r}; dropped"
        )
    return env


class InMemoryNetwork:
    """A hub joining one server end and any number of named client ends inside one process.

    Thread-safe (silos may run in threads). ``disconnect(name)`` cuts a client off as if its
    process died: what it sends afterwards and what is sent to it are dropped.
    """

    def __init__(self, registry: Mapping[str, type], *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.registry = dict(registry)
        self.max_bytes = max_bytes
        self._to_server: queue.Queue[tuple[str, list[bytes]]] = queue.Queue()
        self._to_client: dict[str, queue.Queue[list[bytes]]] = {}
        self._dead: set[str] = set()
        self._lock = threading.Lock()

    def server(self) -> "_MemServer":
        return _MemServer(self)

    def client(self, name: str) -> "_MemClient":
        with self._lock:
            self._dead.discard(name)
            self._to_client[name] = queue.Queue()
        return _MemClient(self, name)

    def disconnect(self, name: str) -> None:
        with self._lock:
            self._dead.add(name)
            self._to_client.pop(name, None)

    def _frames(self, env: Envelope) -> list[bytes]:
        return [bytes(f) for f in encode(env)]

    def _alive(self, name: str) -> bool:
        with self._lock:
            return name not in self._dead and name in self._to_client


class _MemServer:
    def __init__(self, net: InMemoryNetwork) -> None:
        self.net = net
        self.traffic = Traffic()

    def send(self, to: str, env: Envelope) -> int:
        frames = self.net._frames(env)
        n = payload_nbytes(frames)
        self.traffic.add_sent(to, n)
        with self.net._lock:
            q = None if to in self.net._dead else self.net._to_client.get(to)
        if q is not None:
            q.put(frames)
        return n

    def recv(self, timeout_s: float) -> Envelope | None:
        try:
            peer, frames = self.net._to_server.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None
        self.traffic.add_received(peer, payload_nbytes(frames))
        env = decode(frames, self.net.registry, max_bytes=self.net.max_bytes)
        return check_sender(env, peer)

    def close(self) -> None:
        pass


class _MemClient:
    def __init__(self, net: InMemoryNetwork, name: str) -> None:
        self.net = net
        self.name = name
        self.traffic = Traffic()

    def send(self, env: Envelope) -> int:
        frames = self.net._frames(env)
        n = payload_nbytes(frames)
        self.traffic.add_sent(AGGREGATOR, n)
        if self.net._alive(self.name):
            self.net._to_server.put((self.name, frames))
        return n

    def recv(self, timeout_s: float) -> Envelope | None:
        with self.net._lock:
            q = self.net._to_client.get(self.name)
        if q is None:  # cut off: behave like a dead socket
            time.sleep(max(timeout_s, 0.0))
            return None
        try:
            frames = q.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None
        self.traffic.add_received(AGGREGATOR, payload_nbytes(frames))
        return decode(frames, self.net.registry, max_bytes=self.net.max_bytes)

    def close(self) -> None:
        self.net.disconnect(self.name)
