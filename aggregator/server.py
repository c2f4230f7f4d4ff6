"""The aggregator's ZeroMQ end: a ROUTER socket with CURVE and a ZAP allowlist of silo keys.

CURVE is always on unless ``allow_insecure_plaintext`` is passed (the caller checks the site
policy and the command-line flag first). pyzmq's authenticator admits only the public keys on
the allowlist and names each connection by its silo, so a message's claimed sender is checked
against the key that authenticated it. ``MAXMSGSIZE`` caps every frame; the wire decoder then
checks each frame against its declared spec.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

import zmq
from zmq.auth.thread import ThreadAuthenticator

from fedalign.protocol.errors import InsecureModeRefused, ProtocolError
from fedalign.protocol.keys import KeyPair
from fedalign.protocol.transport import Traffic, check_sender
from fedalign.protocol.wire import DEFAULT_MAX_BYTES, MAX_HEADER_BYTES, Envelope, decode, encode, payload_nbytes, peek_header

__all__ = ["ZmqServer", "INSECURE_PLAINTEXT_WARNING"]

log = logging.getLogger(__name__)

INSECURE_PLAINTEXT_WARNING = (
    "INSECURE: transport without CURVE; anyone on the network can read and forge messages"
)


class _Allowlist:
    """ZAP credentials provider: admits exactly the allowlisted silo keys."""

    def __init__(self, keys_to_names: Mapping[bytes, str]) -> None:
        self.keys_to_names = dict(keys_to_names)

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.keys_to_names
        if not ok:
            log.warning("refused a connection from an unknown CURVE key %s", key.decode("ascii", "replace"))
        return ok


class _Authenticator(ThreadAuthenticator):
    """Sets each connection's ZAP User-Id to the silo name its key belongs to."""

    def __init__(self, context: zmq.Context, keys_to_names: Mapping[bytes, str]) -> None:
        super().__init__(context)
        self._names = dict(keys_to_names)

    def curve_user_id(self, client_public_key: bytes) -> str:
        from zmq.utils import z85

        return self._names[z85.encode(client_public_key)]


class ZmqServer:
    """ROUTER at ``endpoint``; speaks to silos by name (see :class:`fedalign.protocol.transport.ServerTransport`)."""

    def __init__(
        self,
        endpoint: str,
        *,
        keypair: KeyPair | None,
        allowlist: Mapping[str, str],
        registry: Mapping[str, type],
        max_bytes: int = DEFAULT_MAX_BYTES,
        allow_insecure_plaintext: bool = False,
    ) -> None:
        if keypair is None and not allow_insecure_plaintext:
            raise InsecureModeRefused("the aggregator needs its CURVE key pair (aggregator keygen)")
        self.registry = dict(registry)
        self.max_bytes = max_bytes
        self.traffic = Traffic()
        self._routes: dict[str, bytes] = {}
        self._allowed = set(allowlist)
        self.ctx = zmq.Context()
        self._auth: _Authenticator | None = None
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.MAXMSGSIZE, max(max_bytes, MAX_HEADER_BYTES))  # per frame
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if keypair is not None:
            if keypair.secret is None:
                raise InsecureModeRefused("the aggregator's key pair lacks its secret key")
            keys = {v.encode("ascii"): k for k, v in allowlist.items()}
            self._auth = _Authenticator(self.ctx, keys)
            self._auth.start()
            self._auth.configure_curve_callback("*", credentials_provider=_Allowlist(keys))
            self.sock.curve_server = True
            self.sock.curve_secretkey = keypair.secret.encode("ascii")
            self.sock.curve_publickey = keypair.public.encode("ascii")
        else:
            warnings.warn(INSECURE_PLAINTEXT_WARNING, stacklevel=2)
            log.warning(INSECURE_PLAINTEXT_WARNING)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)

    def send(self, to: str, env: Envelope) -> int:
        frames = encode(env)
        n = payload_nbytes(frames)
        route = self._routes.get(to)
        if route is None:
            log.info("no connection from %s yet; dropped %s", to, type(env.message).__name__)
            return 0
        self.traffic.add_sent(to, n)
        self.sock.send_multipart([route, *frames], copy=False)
        return n

    def recv(self, timeout_s: float) -> Envelope | None:
        if not self._poller.poll(max(0, int(timeout_s * 1000))):
            return None
        frames = self.sock.recv_multipart(copy=False)
        route, body = frames[0].bytes, frames[1:]
        if self._auth is not None:
            name = body[0].get("User-Id") if body else ""
        else:  # plaintext: nothing authenticates the sender, the header is all there is
            name = str(peek_header([f.buffer for f in body]).get("sender", ""))
        if name not in self._allowed:
            raise ProtocolError(f"message from unlisted peer {name!r}; dropped")
        self.traffic.add_received(name, payload_nbytes([f.buffer for f in body]))
        env = decode([f.buffer for f in body], self.registry, max_bytes=self.max_bytes)
        check_sender(env, name)
        self._routes[name] = route
        return env

    def close(self, linger_ms: int = 1000) -> None:
        """Close, giving queued messages (a final RunEnd or LeaveNotice) ``linger_ms`` to leave."""
        self.sock.close(linger=linger_ms)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()

    def __enter__(self) -> "ZmqServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
