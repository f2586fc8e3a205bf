"""The SSRF guard of the http-request node: public addresses only, checked where we connect.

A workflow author picks the URL (often from user input), so without a guard a node could
reach the worker's own network: loopback services, the cloud metadata endpoint
(169.254.169.254), databases on private ranges. Dify sends such requests through a Squid
proxy whose ACLs deny those ranges; fanflow checks in-process instead:

- the host is resolved (every A/AAAA record) and the request is refused when ANY address is
  not public: loopback, private (RFC 1918, fc00::/7), link-local, CGNAT 100.64/10,
  multicast, reserved, unspecified, and IPv4 addresses embedded in IPv6 (IPv4-mapped,
  NAT64 64:ff9b::/96, 6to4, Teredo) when the embedded address is one of those;
- the connection goes to one of the addresses just checked (`GuardedTransport` pins it,
  keeping the Host header and the TLS server name and certificate check on the host name),
  so a DNS answer that changes between check and connect (DNS rebinding) cannot slip by;
- the caller follows redirects itself and every hop passes through here again.

Opt-outs: `allow_private_networks` turns the guard off; an allow-list admits CIDRs,
addresses and host names (`*.corp.example` for a domain and its subdomains).

Limits: ports are not restricted (Dify's proxy allows 80 and 443 only); a proxy configured
in the environment is not used (the guard must see the real destination).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from fanflow.http_pool import ShardedTransport, released
from fanflow.metrics import SSRF_REFUSALS
from fanflow.resilience.upstreams import UpstreamFailure

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
#: host names whose connection pools one `GuardedTransport` keeps
MAX_HOST_POOLS = 256
_OPT_IN = (
    "set FANFLOW_HTTP_ALLOW_PRIVATE_NETWORKS=true or list it in FANFLOW_HTTP_ALLOW_LIST to allow"
)


class SsrfRefused(UpstreamFailure):
    """A request to a non-public address, refused before connecting."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="ssrf", retryable=False, error_type="SSRFError")


def refusal(address: IPAddress) -> tuple[str, str] | None:
    """(category, why) when `address` is not a public unicast address, else None."""
    if isinstance(address, ipaddress.IPv6Address) and (found := _embedded_ipv4(address)):
        how, inner = found
        verdict = refusal(inner)
        if verdict is not None:
            return verdict[0], f"{verdict[1]} ({how} {inner})"
        if how != "Teredo":
            return None  # a public IPv4 address reached over IPv6
    checks: list[tuple[bool, str, str]] = [
        (address.is_unspecified, "unspecified", "an unspecified address"),
        (address.is_loopback, "loopback", "a loopback address"),
        (address.is_link_local, "link_local", "a link-local address"),
        (address in _CGNAT, "cgnat", "a shared (CGNAT) address"),
        (address.is_multicast, "multicast", "a multicast address"),
        (any(address in n for n in (*_RFC1918, _UNIQUE_LOCAL)), "private", "a private address"),
        (address in _NAT64_LOCAL, "private", "a local-use NAT64 address"),
        (getattr(address, "is_site_local", False), "private", "a site-local address"),
        (address.is_reserved, "reserved", "a reserved address"),
        (address.is_private or not address.is_global, "special", "a special-purpose address"),
    ]
    for hit, category, why in checks:
        if hit:
            if address in _METADATA:
                why += " (the cloud metadata service)"
            return category, why
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "NAT64 of", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4 of", address.sixtofour
    if address.teredo is not None:
        return "Teredo", address.teredo[1]
    return None


@dataclass(frozen=True)
class AllowList:
    """Destinations admitted although not public: networks, host names, domain suffixes."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        domains: list[str] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                domains.append(_host_name(entry[2:]))
            else:
                hosts.add(_host_name(entry))
        return cls(tuple(networks), frozenset(hosts), tuple(domains))

    def admits_host(self, host: str) -> bool:
        return host in self.hosts or any(
            host == domain or host.endswith("." + domain) for domain in self.domains
        )

    def admits_address(self, address: IPAddress) -> bool:
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.1 is 10.0.0.1
        return any(
            address in net or (mapped is not None and mapped in net) for net in self.networks
        )


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order (tests patch this)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        found.setdefault(str(sockaddr[0]).split("%")[0], None)
    return list(found)


class AddressGuard:
    """Decides where a request may connect: `addresses(host, port)` or a refusal."""

    def __init__(self, *, allow_list: Iterable[str] = ()) -> None:
        self.allow_list = AllowList.parse(allow_list)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The checked addresses to connect to for `host` (raises `SsrfRefused`)."""
        host = _host_name(host)
        literal = _ip_or_none(host)
        if literal is not None:
            self._check(host, literal, literal=True)
            return [str(literal)]
        try:
            found = await resolve_host(host, port)
        except (OSError, UnicodeError) as exc:
            raise UpstreamFailure(
                f"cannot resolve host {host}: {exc}",
                reason="connect",
                retryable=True,
                error_type="HttpRequestNodeError",
            ) from exc
        if not found:
            raise UpstreamFailure(
                f"host {host} has no address",
                reason="connect",
                retryable=True,
                error_type="HttpRequestNodeError",
            )
        if not self.allow_list.admits_host(host):
            for address in found:
                self._check(host, ipaddress.ip_address(address))
        return found

    def _check(self, host: str, address: IPAddress, *, literal: bool = False) -> None:
        if self.allow_list.admits_host(host) or self.allow_list.admits_address(address):
            return
        verdict = refusal(address)
        if verdict is None:
            return
        category, why = verdict
        SSRF_REFUSALS.labels(category).inc()
        subject = f"{host} is" if literal else f"{host} resolves to {address}, which is"
        raise SsrfRefused(f"request to {host} refused: {subject} {why} ({_OPT_IN})")


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that connects only to addresses its guard checked.

    Each request's URL host is replaced by a checked address; the Host header and, for
    HTTPS, the TLS server name (SNI and certificate check) stay the host name. One
    connection pool per host name, so a TLS connection is never shared across names; a
    pool's connections are keyed by address, so a request reuses a kept-alive connection
    only to an address checked for that very request. Shared by concurrent requests; at
    most `max_hosts` pools, the least recently used idle ones closed beyond that.
    """

    def __init__(
        self,
        guard: AddressGuard,
        *,
        ssl_context: ssl.SSLContext,
        max_hosts: int = MAX_HOST_POOLS,
        **pool: Any,
    ) -> None:
        self._guard = guard
        self._ssl_context = ssl_context
        self._pool_options = pool
        self._max_hosts = max_hosts
        self._transports: OrderedDict[str, httpx.AsyncBaseTransport] = OrderedDict()
        #: requests per host whose response is not closed yet (a pool in use is not closed)
        self._in_use: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.raw_host.decode("ascii")
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        addresses = await self._guard.addresses(host, port)
        extensions = dict(request.extensions)
        if _ip_or_none(host) is None:
            extensions["sni_hostname"] = host
        failure: httpx.ConnectError | None = None
        self._in_use[host] = self._in_use.get(host, 0) + 1
        try:
            transport = await self._transport(host)
            for address in addresses:  # all checked: try the next when one does not answer
                pinned = httpx.Request(
                    request.method,
                    request.url.copy_with(host=address),
                    headers=request.headers,
                    stream=request.stream,
                    extensions=extensions,
                )
                try:
                    response = await transport.handle_async_request(pinned)
                except httpx.ConnectError as exc:
                    failure = exc
                    continue
                return released(response, lambda: self._release(host))
        except BaseException:
            self._release(host)
            raise
        self._release(host)
        assert failure is not None
        raise failure

    async def _transport(self, host: str) -> httpx.AsyncBaseTransport:
        transport = self._transports.get(host)
        if transport is not None:
            self._transports.move_to_end(host)
            return transport
        transport = ShardedTransport(
            verify=self._ssl_context, trust_env=False, **self._pool_options
        )
        self._transports[host] = transport
        idle = [h for h in self._transports if h not in self._in_use]
        for name in idle[: max(0, len(self._transports) - self._max_hosts)]:
            await self._transports.pop(name).aclose()  # the least recently used first
        return transport

    def _release(self, host: str) -> None:
        left = self._in_use.get(host, 0) - 1
        if left > 0:
            self._in_use[host] = left
            return
        self._in_use.pop(host, None)

    async def aclose(self) -> None:
        transports = list(self._transports.values())
        self._transports.clear()
        for transport in transports:
            await transport.aclose()


def _host_name(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _ip_or_none(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
