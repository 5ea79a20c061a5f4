"""Outbound connections to addresses that someone else chose (client webhook targets, provider
output URLs) are refused when they lead to loopback, private or link-local addresses, unless the
operator allows it. The check is made at connect time on the very addresses DNS returned, so
a name that resolves differently later (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class NonPublicAddress(OSError):
    """A host that resolves only to non-public addresses."""


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_global and not ip.is_multicast


def is_non_public_literal(url: str) -> bool:
    """True when the URL's host is an IP literal that is not public: aiohttp does not resolve
    literals, so PublicOnlyResolver never sees them and they are checked here."""
    host = urlsplit(url).hostname or ""
    try:
        return not is_public_address(host)
    except ValueError:
        return False  # a name: checked by PublicOnlyResolver when connecting


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default, but refuses non-public addresses: the check happens on
    the very addresses the connection will use."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        public = [r for r in results if is_public_address(r["host"])]
        if not public:
            raise NonPublicAddress(f"{host} resolves only to non-public addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()
