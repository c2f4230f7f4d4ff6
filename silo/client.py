"""The silo's ZeroMQ end: a DEALER socket that pins the aggregator's CURVE public key.

CURVE is always on unless ``allow_insecure_plaintext`` is passed (the caller checks the site
policy and the command-line flag first). The socket reconnects by itself, so a restarted
aggregator on the same endpoint is found again; ``MAXMSGSIZE`` caps what it accepts.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

import zmq

from fedalign.protocol.errors import InsecureModeRefused
from fedalign.protocol.keys import KeyPair
from fedalign.protocol.transport import AGGREGATOR, Traffic
from fedalign.protocol.wire import DEFAULT_MAX_BYTES, MAX_HEADER_BYTES, Envelope, decode, encode, payload_nbytes

__all__ = ["ZmqClient"]

log = logging.getLogger(__name__)


class ZmqClient:
    """DEALER connected to ``endpoint`` (see :class:`fedalign.protocol.transport.ClientTransport`)."""

    def __init__(
        self,
        endpoint: str,
        name: str,
        *,
        keypair: KeyPair | None,
        server_public: str | None,
        registry: Mapping[str, type],
        max_bytes: int = DEFAULT_MAX_BYTES,
        allow_insecure_plaintext: bool = False,
    ) -> None:
        if (keypair is None or server_public is None) and not allow_insecure_plaintext:
            raise InsecureModeRefused(
                "the silo needs its CURVE key pair (silo keygen) and the aggregator's public key"
            )
        self.name = name
        self.registry = dict(registry)
        self.max_bytes = max_bytes
        self.traffic = Traffic()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.MAXMSGSIZE, max(max_bytes, MAX_HEADER_BYTES))  # per frame
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if keypair is not None and server_public is not None:
            if keypair.secret is None:
                raise InsecureModeRefused("the silo's key pair lacks its secret key")
            self.sock.curve_serverkey = server_public.encode("ascii")
            self.sock.curve_publickey = keypair.public.encode("ascii")
            self.sock.curve_secretkey = keypair.secret.encode("ascii")
        else:
            msg = "INSECURE: silo transport without CURVE; the network can read and forge its messages"
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
        self.sock.connect(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)

    def send(self, env: Envelope) -> int:
        frames = encode(env)
        n = payload_nbytes(frames)
        self.traffic.add_sent(AGGREGATOR, n)
        self.sock.send_multipart(frames, copy=False)
        return n

    def recv(self, timeout_s: float) -> Envelope | None:
        if not self._poller.poll(max(0, int(timeout_s * 1000))):
            return None
        frames = self.sock.recv_multipart(copy=False)
        bufs = [f.buffer for f in frames]
        self.traffic.add_received(AGGREGATOR, payload_nbytes(bufs))
        return decode(bufs, self.registry, max_bytes=self.max_bytes)

    def close(self, linger_ms: int = 1000) -> None:
        """Close, giving queued messages (a final RunEnd or LeaveNotice) ``linger_ms`` to leave."""
        self.sock.close(linger=linger_ms)
        self.ctx.term()

    def __enter__(self) -> "ZmqClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
