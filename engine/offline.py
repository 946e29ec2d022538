"""The offline guarantee: no byte of a case leaves the machine.

Two layers. The Hugging Face switches make transformers and huggingface_hub never try the
network; they must be set before either is imported, which is why ``engine/__init__`` calls
:func:`set_offline_switches` first. The in-process guard then refuses any socket connection,
datagram or name lookup for a non-loopback address, so a library we did not think of cannot
phone home either (nor leak a host name through DNS).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

_SWITCHES = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DO_NOT_TRACK": "1",
}


class NetworkBlockedError(ConnectionRefusedError):
    """Raised when code in this process tries to reach a non-loopback address."""


def set_offline_switches() -> None:
    """Force the Hugging Face libraries offline (overrides whatever the environment said)."""
    os.environ.update(_SWITCHES)


def _is_loopback(address: Any) -> bool:
    if isinstance(address, (str, bytes)):
        return True  # an AF_UNIX path never leaves the machine
    if not (isinstance(address, tuple) and address):
        return False
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: refuse


# Hosts the user explicitly chose to send work to (``--ray ADDRESS``): names and addresses.
_ALLOWED: set[str] = set()


def allow_host(host: str) -> list[str]:
    """Let this process resolve and reach ``host`` as well as loopback, until
    :func:`forget_hosts`: the user's explicit choice of a cluster's head. Returns its
    addresses. (Code outside Python, such as Ray's core, is not governed by this guard.)"""
    _ALLOWED.add(host)
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return []
    addresses = sorted({str(entry[4][0]) for entry in found})
    _ALLOWED.update(addresses)
    return addresses


def forget_hosts(hosts: list[str]) -> None:
    """Refuse ``hosts`` again."""
    _ALLOWED.difference_update(hosts)


def _permitted(address: Any) -> bool:
    if _is_loopback(address):
        return True
    host = address[0] if isinstance(address, tuple) and address else None
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return isinstance(host, str) and (host in _ALLOWED or host.split("%")[0] in _ALLOWED)


def _guarded(original: Callable[..., Any]) -> Callable[..., Any]:
    def connect(self: socket.socket, address: Any, *args: Any) -> Any:
        if self.family != getattr(socket, "AF_UNIX", None) and not _permitted(address):
            raise NetworkBlockedError(
                f"TokenTrace is offline: refused a connection to {address!r}. "
                "Only loopback (127.0.0.1, ::1) is allowed."
            )
        return original(self, address, *args)

    connect.__wrapped__ = original  # type: ignore[attr-defined]
    return connect


def _guarded_sendto(original: Callable[..., Any]) -> Callable[..., Any]:
    def sendto(self: socket.socket, data: Any, *args: Any) -> Any:
        address = args[-1] if args else None  # sendto(data, address) or (data, flags, address)
        if self.family != getattr(socket, "AF_UNIX", None) and not _permitted(address):
            raise NetworkBlockedError(
                f"TokenTrace is offline: refused a datagram to {address!r}. "
                "Only loopback (127.0.0.1, ::1) is allowed."
            )
        return original(self, data, *args)

    sendto.__wrapped__ = original  # type: ignore[attr-defined]
    return sendto


def _guarded_getaddrinfo(original: Callable[..., Any]) -> Callable[..., Any]:
    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode(errors="replace") if isinstance(host, bytes) else host
        if name is not None and not _permitted((name, 0)):
            # A DNS query for a host name leaks it (and often the reason) to the network.
            raise NetworkBlockedError(
                f"TokenTrace is offline: refused to resolve {name!r}. "
                "Only loopback (localhost, 127.0.0.1, ::1) is allowed."
            )
        return original(host, *args, **kwargs)

    getaddrinfo.__wrapped__ = original  # type: ignore[attr-defined]
    return getaddrinfo


def install_network_guard() -> None:
    """Refuse every non-loopback ``connect``, datagram and name lookup in this process.
    Idempotent."""
    for name in ("connect", "connect_ex"):
        current = getattr(socket.socket, name)
        if not hasattr(current, "__wrapped__"):
            setattr(socket.socket, name, _guarded(current))
    if not hasattr(socket.socket.sendto, "__wrapped__"):
        socket.socket.sendto = _guarded_sendto(socket.socket.sendto)  # type: ignore[method-assign]
    if not hasattr(socket.getaddrinfo, "__wrapped__"):
        socket.getaddrinfo = _guarded_getaddrinfo(socket.getaddrinfo)


def network_guard_installed() -> bool:
    return hasattr(socket.socket.connect, "__wrapped__")
