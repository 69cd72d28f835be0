"""Inputs named by URL or local path, fetched only where the settings allow it.

URLs (off unless `CHORUS_FETCH_URLS=1`): http(s) only, every address the host resolves to
must be public (no loopback, private, link-local, multicast or reserved address), the
connection goes to the address that was checked, redirects are not followed, and the body is
bounded in bytes and in time. Local paths: only under `CHORUS_INPUT_ROOT`, with `..` and
symlinks that lead out of it refused.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]


class FetchRefused(ValueError):
    """An input URL or path that the settings do not allow, or that could not be read."""


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchRefused(f"cannot resolve {host}: {e}") from e
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class FetchPolicy:
    allow_urls: bool = False
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0
    input_root: Path | None = None
    allow_private: bool = False  # tests only: their stand-in servers live on loopback

    def fetch(self, location: str, resolver: Resolver = resolve) -> tuple[str, bytes]:
        """The file's name and bytes, or `FetchRefused` saying why not."""
        if location.startswith(("http://", "https://")):
            return self._fetch_url(location, resolver)
        if "://" in location:
            raise FetchRefused(f"only http and https URLs are fetched, not {location[:80]!r}")
        return self._read_local(location)

    def _read_local(self, location: str) -> tuple[str, bytes]:
        if self.input_root is None:
            raise FetchRefused("local paths are not read (CHORUS_INPUT_ROOT is not set)")
        root = self.input_root.resolve()
        given = Path(location).expanduser()
        if ".." in given.parts:
            raise FetchRefused(f"{location!r}: '..' is not allowed in input paths")
        path = given if given.is_absolute() else root / given
        real = path.resolve()
        if not real.is_relative_to(root):
            raise FetchRefused(f"{location!r} is outside the input root {root}")
        if not real.is_file():
            raise FetchRefused(f"{location!r}: no such file under the input root")
        if real.stat().st_size > self.max_bytes:
            raise FetchRefused(f"{location!r} is over the {self.max_bytes}-byte input limit")
        return real.name, real.read_bytes()

    def _fetch_url(self, url: str, resolver: Resolver) -> tuple[str, bytes]:
        if not self.allow_urls:
            raise FetchRefused("fetching input URLs is off (CHORUS_FETCH_URLS=1 turns it on)")
        parts = urlsplit(url)
        if not parts.hostname:
            raise FetchRefused(f"{url[:80]!r} names no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = resolver(parts.hostname, port)
        if not addresses:
            raise FetchRefused(f"{parts.hostname} resolves to no address")
        for address in addresses:
            self._check_address(parts.hostname, address)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        name = Path(parts.path).name or "download"
        return name, self._download(parts.scheme, parts.hostname, addresses[0], port, target)

    def _check_address(self, host: str, address: str) -> None:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        public = ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)
        if not public and not self.allow_private:
            raise FetchRefused(f"{host} resolves to {address}, a non-public address")

    def _download(self, scheme: str, host: str, address: str, port: int, target: str) -> bytes:
        conn = _pinned_connection(scheme, host, address, port, self.timeout_s)
        started = time.monotonic()
        try:
            conn.request("GET", target, headers={"Host": host, "User-Agent": "chorus-executor"})
            response = conn.getresponse()
            if response.status != 200:
                raise FetchRefused(f"{host}{target} answered HTTP {response.status}")
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > self.max_bytes:
                raise FetchRefused(f"{host}{target} is over the {self.max_bytes}-byte input limit")
            body = bytearray()
            while chunk := response.read1(65536):  # what has arrived: a trickle cannot stall it
                body += chunk
                if len(body) > self.max_bytes:
                    raise FetchRefused(
                        f"{host}{target} is over the {self.max_bytes}-byte input limit"
                    )
                if time.monotonic() - started > self.timeout_s:
                    raise FetchRefused(f"{host}{target} took over {self.timeout_s:g} s")
            return bytes(body)
        except (OSError, http.client.HTTPException) as e:
            raise FetchRefused(f"fetching {host}{target} failed: {e}") from e
        finally:
            conn.close()


def _pinned_connection(
    scheme: str, host: str, address: str, port: int, timeout_s: float
) -> http.client.HTTPConnection:
    """A connection to the checked address, so a second DNS answer cannot redirect it."""
    if scheme == "http":
        return http.client.HTTPConnection(address, port, timeout=timeout_s)
    context = ssl.create_default_context()

    class Pinned(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = socket.create_connection((address, port), timeout_s)
            self.sock = context.wrap_socket(raw, server_hostname=host)

    return Pinned(host, port, timeout=timeout_s, context=context)
