"""Shelly RPC on the LAN, on aioshelly: :func:`probe` (``GET /shelly``) and :class:`LanTransport`.

Why a WebSocket, and why aioshelly's ``WsRPC`` rather than its ``RpcDevice``
-----------------------------------------------------------------------------
A fleet run makes many short calls to each of hundreds of devices at once (a provisioning is
some 10-30 calls per device: configs, PEM and script chunks of 1 KiB each, reboots). Measured
against the simulator (300 devices x 20 ``Sys.GetStatus``, client and simulator in one process on
the 2-core machine): ``POST /rpc`` over HTTP cost 0.90 ms of CPU per call, aioshelly's WebSocket
RPC 0.24 ms; the device closes every HTTP connection after one answer (``Connection: close``,
shelly-api.md §3), so each HTTP call pays a TCP connection and a request on both sides, and with
digest auth often a 401 round trip too. The WebSocket carries every call of a device over one
connection, with ``id`` matching, digest auth in the frame (§5) and aioshelly's answer to a stale
nonce. So the transport is a WebSocket to ``ws://<address>/rpc``, through aioshelly's
:class:`~aioshelly.rpc_device.wsrpc.WsRPC`.

aioshelly's ``RpcDevice`` is not used: its ``initialize()`` sends ``Shelly.GetDeviceInfo``,
``Shelly.GetConfig``, ``Shelly.GetStatus`` and ``Shelly.GetComponents`` before the first call a
fleet operation wants, four calls per device and connection that a provisioning never needs. The
one call this transport may add is ``Shelly.GetDeviceInfo`` on the first connection, and only when
a password is given without the device id (the digest realm is the device id, §5).

Robustness: the connection is opened by the first call and again, lazily, by the first call after
it dropped (a reboot closes it: provisioning reboots devices mid-session), each attempt bounded by
the call's timeout. A call that times out or is cancelled leaves its connection suspect (a device
that lost power leaves a half-open socket that only a timeout reveals), so the next call opens a
new one. A call in flight when the connection drops fails with :class:`DeviceConnectionError`;
the next one reconnects. Nothing is retried here: whether a call may be repeated is the caller's
decision (``Shelly.Reboot`` twice is two reboots).

Note: with a password, aioshelly sends one call at a time (each frame's digest ``nc`` follows
the last challenge), so a device with a password has one call in flight whatever ``concurrency``
says; without one, up to ``concurrency`` calls share the connection.

Every aioshelly and aiohttp exception is translated here into the
:class:`~kilowatch.errors.DeviceError` family (``raise ... from err``); none leaves this module.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from aioshelly import exceptions as shelly_errors
from aioshelly.common import get_info
from aioshelly.rpc_device.wsrpc import WsRPC

from kilowatch.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceTimeoutError,
    FleetError,
    InvalidAuthError,
    RpcCallError,
)
from kilowatch.fleet.rpc import redact
from kilowatch.fleet.rpc.base import CALL_TIMEOUT_S, DEVICE_CONCURRENCY, Listener, ShellyRpc

log = logging.getLogger(__name__)
redact.install()  # aioshelly logs frames with their params at DEBUG: passwords, keys

PROBE_TIMEOUT_S = 3.0
"""Default bound of one ``GET /shelly``: a device on the LAN answers in well under a second, and a
scan of a /24 with 64 probes in flight then takes about four bounds when nothing answers."""
HTTP_PORT = 80
"""Where Shelly devices serve HTTP and the RPC WebSocket (§3, §4)."""
AUTH_USER = "admin"
"""The only digest-auth user of a Shelly Gen2+ device (§5)."""
CLOSE_TIMEOUT_S = 1.0
"""How long closing a WebSocket waits for the device's close frame before dropping the socket
(aiohttp would wait 10 s on a device that went silent)."""


def split_address(address: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → ``(host, port)`` (port 80 by default).

    Raises :class:`FleetError` for anything else (a URL, an empty host, a bad port).
    """
    text = address.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise FleetError(address, "not an address: expected host, host:port or [v6]:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        host = text  # a bare IPv6 address
        _check_ipv6(address, host)
    if not host or "/" in host or " " in host:
        raise FleetError(address, "not an address: expected host, host:port or [v6]:port")
    if not port_text:
        return host, HTTP_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise FleetError(address, f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _check_ipv6(address: str, host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise FleetError(address, "not an address: expected host, host:port or [v6]:port") from None


async def probe(
    address: str, *, session: aiohttp.ClientSession, timeout: float = PROBE_TIMEOUT_S
) -> dict[str, Any]:
    """``GET http://<address>/shelly``: the device's info (what ``Shelly.GetDeviceInfo`` returns;
    never behind a password, §3). One request, bounded by ``timeout``; cheap enough to run on
    hundreds of addresses at once with a shared ``session``.

    Gen2+ devices answer with ``gen`` (2, 3, 4); a Gen1 device's answer has ``type`` and ``mac``
    but no ``gen`` and is returned as it is. Raises :class:`DeviceConnectionError` (nothing
    listens, refused, reset), :class:`DeviceTimeoutError` (no answer within ``timeout``), or
    :class:`DeviceError` (something answered that is not a Shelly device).
    """
    host, port = split_address(address)
    try:
        async with asyncio.timeout(timeout):
            info = await get_info(session, host, port=port)
    except (TimeoutError, shelly_errors.DeviceConnectionTimeoutError) as err:
        raise DeviceTimeoutError(
            address, f"no answer to GET /shelly within {timeout:g} s", seconds=timeout
        ) from err
    except shelly_errors.DeviceConnectionError as err:
        cause = err.__cause__
        if isinstance(cause, aiohttp.ClientResponseError):
            # it answered HTTP, but with an error status or something that is not JSON
            raise DeviceError(
                address, f"GET /shelly answered {cause.status} {cause.message}: not a Shelly device"
            ) from err
        raise DeviceConnectionError(address, f"GET /shelly: {_reason(err)}") from err
    except (shelly_errors.ShellyError, KeyError, TypeError, ValueError) as err:
        # aioshelly's InvalidHostError (a body that is not JSON), or JSON without "mac"
        raise DeviceError(address, f"GET /shelly: not a Shelly device's answer ({err!r})") from err
    if not isinstance(info, dict):
        raise DeviceError(address, "GET /shelly: not a Shelly device's answer")
    return info


def _reason(err: BaseException) -> str:
    """The most telling text of an aioshelly error: its cause's, when it wraps one."""
    cause = err.__cause__ or err
    if isinstance(cause, shelly_errors.ShellyError) and not all(
        isinstance(arg, str | BaseException) for arg in cause.args
    ):
        # aioshelly fails the calls in flight with the call itself as the error's argument
        return "the connection closed"
    return str(cause) or type(cause).__name__


class LanTransport:
    """A :class:`~kilowatch.fleet.rpc.base.Transport` over the device's RPC WebSocket (see the
    module doc), on a caller-owned ``aiohttp`` session. Connects on the first call."""

    def __init__(
        self,
        address: str,
        *,
        session: aiohttp.ClientSession,
        password: str | None = None,
        device_id: str | None = None,
    ) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.device_id = device_id
        self._session = session
        self._password = password
        self._rpc: WsRPC | None = None
        self._suspect = False
        self._closed = False
        self._connecting = asyncio.Lock()
        self._listeners: list[Listener] = []

    @property
    def label(self) -> str:
        """The device id once known (given, or learnt for the digest realm), else the address."""
        return self.device_id or self.address

    @property
    def connected(self) -> bool:
        """Whether a WebSocket to the device is open now."""
        return self._rpc is not None and self._rpc.connected and not self._suspect

    def set_password(self, password: str | None) -> None:
        """Use ``password`` from the next call on (after ``Shelly.SetAuth`` changed it): the
        current connection is closed and the next call opens one with the new credentials."""
        self._password = password
        self._suspect = True

    async def call(self, method: str, params: Mapping[str, Any] | None, *, timeout: float) -> Any:
        """One call; see :class:`~kilowatch.fleet.rpc.base.Transport`."""
        if self._closed:
            raise DeviceConnectionError(self.label, f"{method}: the connection was closed")
        try:
            async with asyncio.timeout(timeout):
                rpc = await self._connection(timeout)
                return await rpc.call(method, dict(params) if params is not None else None, timeout)
        except asyncio.CancelledError:
            self._suspect = True  # its frame may be on the wire; this connection is not trusted
            raise
        except TimeoutError as err:
            self._suspect = True
            raise DeviceTimeoutError(
                self.label, f"{method}: no answer within {timeout:g} s", seconds=timeout
            ) from err
        except (shelly_errors.ShellyError, aiohttp.ClientError, OSError, RuntimeError) as err:
            raise self._translate(method, err, timeout) from err
        except orjson.JSONEncodeError as err:
            raise FleetError(method, f"its params cannot be sent as JSON: {err}") from err

    def _translate(self, method: str, err: Exception, timeout: float) -> DeviceError:
        if isinstance(err, shelly_errors.DeviceConnectionTimeoutError):
            self._suspect = True
            return DeviceTimeoutError(
                self.label, f"{method}: no answer within {timeout:g} s", seconds=timeout
            )
        if isinstance(err, shelly_errors.InvalidAuthError):
            if self._password is None:
                why = "the device has a password (Shelly.SetAuth) and none was given"
            else:
                why = f"the device refused the password (digest auth, user {AUTH_USER})"
            return InvalidAuthError(self.label, f"{method}: {why}; give the device's password")
        if isinstance(err, shelly_errors.RpcCallError):
            return RpcCallError(self.label, method, int(err.code), str(err.message))
        if isinstance(
            err,
            shelly_errors.DeviceConnectionError
            | shelly_errors.ConnectionClosed
            | aiohttp.ClientError
            | OSError
            | RuntimeError,  # aioshelly's "Not connected": the socket closed under the call
        ):
            self._suspect = True
            return DeviceConnectionError(
                self.label,
                f"{method}: connection to {self.address} failed or dropped ({_reason(err)}); "
                "the device may be rebooting or offline, the next call reconnects",
            )
        return DeviceError(self.label, f"{method}: {_reason(err)}")

    async def _connection(self, timeout: float) -> WsRPC:
        """The open WebSocket RPC, (re)connected if there is none or it is suspect."""
        async with self._connecting:
            if self._rpc is not None and self._rpc.connected and not self._suspect:
                return self._rpc
            await self._drop()
            rpc = WsRPC(self.host, self._on_notification, port=self.port)
            await rpc.connect(self._session)
            self._rpc, self._suspect = rpc, False
            if self._password is not None:
                if self.device_id is None:
                    # exempt from auth (§5): the realm to answer challenges with
                    info = await rpc.call("Shelly.GetDeviceInfo", None, timeout)
                    self.device_id = str(info.get("auth_domain") or info["id"])
                rpc.set_auth_data(self.device_id, AUTH_USER, self._password)
            log.debug("rpc connected device=%s address=%s", self.label, self.address)
            return rpc

    async def listen(self, callback: Listener) -> Callable[[], None]:
        """Receive the device's notifications, ``callback(method, params)``, from now until the
        returned function is called. They flow on the WebSocket after the first call of each
        connection (§4): a connection opened again after a reboot carries them again from its
        first call on."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _on_notification(self, *notification: Any) -> None:
        """A notification (variadic: aioshelly's callback signature changed between releases,
        ``(method, params)`` then ``(source, method, params)``): handed to the listeners, if
        any (the fleet mostly reads a device's state by calling)."""
        if len(notification) < 2 or not self._listeners:
            return
        method, params = notification[-2], notification[-1]
        if not isinstance(method, str) or not isinstance(params, dict):
            return  # aioshelly's own "the WebSocket closed" notice carries no params
        for listener in list(self._listeners):
            listener(method, params)

    async def _drop(self) -> None:
        rpc, self._rpc = self._rpc, None
        if rpc is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await rpc.disconnect()
        except (TimeoutError, aiohttp.ClientError, OSError, shelly_errors.ShellyError) as err:
            # aiohttp drops the socket when its close handshake is cut short
            log.debug("rpc close device=%s error=%r", self.label, err)

    async def close(self) -> None:
        """Close the WebSocket (idempotent); later calls fail with DeviceConnectionError."""
        self._closed = True
        async with self._connecting:
            await self._drop()


def lan_session() -> aiohttp.ClientSession:
    """A ``ClientSession`` fit for a fleet (call it inside the running loop; close it after the
    devices): no cap on open connections. Each device's WebSocket holds one of the session's
    connections while it is open, and aiohttp's default connector allows 100: with a default
    session the 101st device open at once waits for a free slot until its call times out."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def connect_lan(
    address: str,
    *,
    session: aiohttp.ClientSession,
    password: str | None = None,
    device_id: str | None = None,
    timeout: float = CALL_TIMEOUT_S,
    concurrency: int = DEVICE_CONCURRENCY,
) -> ShellyRpc:
    """A :class:`ShellyRpc` to the device at ``address`` (``host`` or ``host:port``) over a
    :class:`LanTransport`. Nothing is sent yet: the first call connects.

    ``password``: the device password (digest auth, user ``admin``); ``device_id``: its id when
    known (the digest realm and how errors name it; otherwise the address names it until a
    password makes the transport ask the device). ``session`` stays the caller's: share one
    session across devices and close it after them; its connector's ``limit`` caps how many
    devices can be connected at once (see :func:`lan_session`).
    """
    transport = LanTransport(address, session=session, password=password, device_id=device_id)
    return ShellyRpc(transport, timeout=timeout, concurrency=concurrency)


__all__ = [
    "HTTP_PORT",
    "PROBE_TIMEOUT_S",
    "LanTransport",
    "connect_lan",
    "lan_session",
    "probe",
    "split_address",
]
