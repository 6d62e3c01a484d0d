"""Requests the server makes on a client's behalf (webhooks, uploads, voice clips given by URL), safe against
server-side request forgery.

A task names URLs, so a careless server would reach anything it can reach: its own admin ports, the cloud's
metadata service, the private network. Every outbound request here therefore:

- is ``http`` or ``https``;
- resolves the host once and checks every address it resolves to: loopback, private, link-local, shared
  (100.64/10), multicast, reserved and unspecified addresses, and IPv6 forms that carry one of these (IPv4-mapped,
  6to4, Teredo), are refused unless a network of ``allow`` (``--allow-outbound CIDR``) holds them. A name with
  one refused address is refused, so it cannot have the connection land on the bad one;
- connects to the address it checked (the ``Host`` header and TLS SNI keep the name, and certificates are
  checked against the name), so the name cannot resolve elsewhere between the check and the connection;
- follows redirects only for GET (fetching audio), by hand, at most :data:`MAX_REDIRECTS`, each hop checked the
  same way; webhooks and uploads follow none;
- has a deadline for the whole exchange and a bound on the bytes it reads back; proxies from the environment
  are not used (a proxy would connect to whatever the name resolves to on its side).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from ..errors import InvalidInputError

#: Redirects followed when fetching audio.
MAX_REDIRECTS = 3
#: Seconds for one whole exchange (connecting, sending, reading the answer), redirects included.
DEFAULT_TIMEOUT = 20.0
#: Bytes read back from a webhook or an upload target (their answers are not used).
MAX_REPLY_BYTES = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundError(InvalidInputError):
    """A URL the server will not use, or a request to it that failed (a 400 for the request that named it)."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect, and the name to present there."""

    url: httpx.URL
    address: Address

    def request_url(self) -> httpx.URL:
        return self.url.copy_with(host=str(self.address))

    def host_header(self) -> str:
        default = 443 if self.url.scheme == "https" else 80
        port = self.url.port or default
        return self.url.host if port == default else f"{self.url.host}:{port}"


def parse_networks(networks: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``--allow-outbound`` values as networks (a bare address is a network of one)."""
    parsed = []
    for value in networks:
        try:
            parsed.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError as exc:
            raise InvalidInputError(f"Not an address or network in CIDR form: {value!r}.",
                                    param="allow_outbound") from exc
    return parsed


def _embedded(address: Address) -> list[Address]:
    """``address`` and any IPv4 address an IPv6 form carries."""
    found: list[Address] = [address]
    if address.version == 6:
        for inner in (address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None):
            if inner is not None:
                found.append(inner)
    return found


class Outbound:
    """The server's outbound HTTP client. ``allow`` lists networks that may be reached although they are not
    public (tests allow ``127.0.0.1``; a deployment may allow its own storage network)."""

    def __init__(self, allow: Iterable[str] = (), *, timeout: float = DEFAULT_TIMEOUT):
        self.allow = parse_networks(allow)
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def allowed(self, address: Address) -> bool:
        if any(address in network for network in self.allow if network.version == address.version):
            return True
        return all(a.is_global and not a.is_multicast for a in _embedded(address))

    async def check(self, url: str, *, param: str) -> Target:
        """The checked target of ``url``; OutboundError naming ``param`` if it may not be used."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise OutboundError(f"{param} is not a valid URL.", param=param) from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise OutboundError(f"{param} must be an http or https URL.", param=param)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise OutboundError(f"The host of {param} ({parsed.host}) cannot be resolved.", param=param) from exc
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(info[4][0].split("%")[0])
            if not self.allowed(address):
                raise OutboundError(
                    f"{param} points to {address}, a private, loopback or otherwise non-public address; the server "
                    "does not connect there (see --allow-outbound).", param=param, code="outbound_refused")
            addresses.append(address)
        if not addresses:
            raise OutboundError(f"The host of {param} ({parsed.host}) has no address.", param=param)
        return Target(parsed, addresses[0])

    async def get(self, url: str, *, param: str, max_bytes: int) -> bytes:
        """The body of ``url`` (redirects followed, each checked); OutboundError when it cannot be had."""
        status, body, _ = await self._exchange("GET", url, param=param, max_bytes=max_bytes, follow=True)
        if not 200 <= status < 300:
            raise OutboundError(f"Fetching {param} failed: HTTP {status}.", param=param, code="fetch_failed")
        return body

    async def post_json(self, url: str, payload: Any, *, param: str) -> int:
        """POST ``payload`` as JSON; the status the receiver answered."""
        status, _, _ = await self._exchange("POST", url, param=param, json=payload)
        return status

    async def put(self, url: str, data: bytes, *, content_type: str, param: str) -> int:
        """PUT ``data`` as the raw body (a presigned upload URL); the status the receiver answered."""
        status, _, _ = await self._exchange("PUT", url, param=param, content=data,
                                            headers={"content-type": content_type})
        return status

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=self.timeout,
                                             headers={"user-agent": "faster-dia"})
        return self._client

    async def _exchange(self, method: str, url: str, *, param: str, max_bytes: int = MAX_REPLY_BYTES,
                        follow: bool = False, headers: dict[str, str] | None = None, **body: Any,
                        ) -> tuple[int, bytes, httpx.Headers]:
        try:
            with anyio.fail_after(self.timeout):
                for _ in range(MAX_REDIRECTS + 1):
                    target = await self.check(url, param=param)
                    request = self._http().build_request(
                        method, target.request_url(), headers={**(headers or {}), "host": target.host_header()},
                        extensions={"sni_hostname": target.url.host} if target.url.scheme == "https" else None,
                        **body)
                    response = await self._http().send(request, stream=True)
                    try:
                        location = response.headers.get("location")
                        if follow and response.status_code in _REDIRECTS and location:
                            url = str(target.url.join(location))
                            continue
                        data = await _read_bounded(response, max_bytes, param)
                        return response.status_code, data, response.headers
                    finally:
                        await response.aclose()
                raise OutboundError(f"{param} redirects more than {MAX_REDIRECTS} times.", param=param,
                                    code="fetch_failed")
        except TimeoutError as exc:
            raise OutboundError(f"{param} did not answer within {self.timeout:g} s.", param=param,
                                code="fetch_failed") from exc
        except httpx.HTTPError as exc:
            raise OutboundError(f"Could not reach {param}: {type(exc).__name__}.", param=param,
                                code="fetch_failed") from exc


async def _read_bounded(response: httpx.Response, max_bytes: int, param: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise OutboundError(f"{param} is larger than {max_bytes} bytes.", param=param, code="fetch_failed")
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > max_bytes:
            raise OutboundError(f"{param} is larger than {max_bytes} bytes.", param=param, code="fetch_failed")
    return bytes(data)
