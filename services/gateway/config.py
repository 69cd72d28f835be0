"""The gateway's own settings, from `CHORUS_*` variables (the addresses are common settings)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.settings import SettingsError, bool_setting, int_setting, require_url
from services.gateway.keys import ApiKeys


@dataclass(frozen=True)
class GrpcTls:
    """PEM bytes of the server's certificate chain and key, and of the CA whose clients it
    admits (mutual TLS); read at start, so a missing file stops start-up naming it."""

    cert_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GrpcTls | None:
        cert, key = env.get("CHORUS_GRPC_TLS_CERT", ""), env.get("CHORUS_GRPC_TLS_KEY", "")
        client_ca = env.get("CHORUS_GRPC_TLS_CLIENT_CA", "")
        if not cert and not key:
            if client_ca:
                raise SettingsError("CHORUS_GRPC_TLS_CLIENT_CA needs CHORUS_GRPC_TLS_CERT and _KEY")
            return None
        if not cert or not key:
            raise SettingsError("CHORUS_GRPC_TLS_CERT and CHORUS_GRPC_TLS_KEY go together")
        return cls(
            cert_chain=_read("CHORUS_GRPC_TLS_CERT", cert),
            private_key=_read("CHORUS_GRPC_TLS_KEY", key),
            client_ca=_read("CHORUS_GRPC_TLS_CLIENT_CA", client_ca) if client_ca else None,
        )


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SettingsError(f"{name}: cannot read {path}: {e}") from e


@dataclass(frozen=True)
class GatewayConfig:
    # Where clients reach the gateway, for the file links in answers; "": the address the
    # client used (its Host header), which is right unless a proxy rewrites it.
    public_url: str
    cors_origins: tuple[str, ...]  # origins whose pages may call the HTTP API; ("*",) any
    max_body_bytes: int  # an HTTP request body; images may ride inline as data URLs
    api_keys: ApiKeys | None  # None: no keys, every caller anonymous, loopback only
    insecure: bool  # serve a non-loopback address without keys all the same
    reflection: bool  # gRPC server reflection (grpcurl); off hides the API's shape
    max_requests: int  # requests running at once through this gateway
    max_requests_per_key: int  # of those, by one key
    tls: GrpcTls | None = None  # gRPC over TLS (mutual when a client CA is given)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewayConfig:
        public_url = env.get("CHORUS_PUBLIC_URL", "").strip().rstrip("/")
        if public_url:
            require_url("CHORUS_PUBLIC_URL", public_url, ("http", "https"))
        origins = tuple(
            o.strip() for o in env.get("CHORUS_CORS_ORIGINS", "*").split(",") if o.strip()
        )
        for origin in origins:
            if origin != "*":
                require_url("CHORUS_CORS_ORIGINS", origin, ("http", "https"))
        max_body = int_setting(env, "CHORUS_HTTP_MAX_BODY_BYTES", 16 * 1024 * 1024)
        if max_body < 1024:
            raise SettingsError(f"CHORUS_HTTP_MAX_BODY_BYTES must be at least 1024, not {max_body}")
        keys_file = env.get("CHORUS_API_KEYS", "").strip()
        return cls(
            public_url=public_url,
            cors_origins=origins,
            max_body_bytes=max_body,
            api_keys=ApiKeys(Path(keys_file)) if keys_file else None,
            insecure=bool_setting(env, "CHORUS_INSECURE", False),
            reflection=bool_setting(env, "CHORUS_GRPC_REFLECTION", True),
            max_requests=_at_least_one(env, "CHORUS_MAX_REQUESTS", 64),
            max_requests_per_key=_at_least_one(env, "CHORUS_MAX_REQUESTS_PER_KEY", 8),
            tls=GrpcTls.from_env(env),
        )

    def check_exposure(self, addrs: Mapping[str, str]) -> None:
        """Without keys, a gateway listens on loopback only, unless told it is insecure:
        `addrs` maps each setting's name to its `host:port` ("" when not served)."""
        if self.api_keys is not None or self.insecure:
            return
        for name, addr in addrs.items():
            if addr and not is_loopback(addr.rpartition(":")[0]):
                raise SettingsError(
                    f"{name}={addr} is reachable from other machines and CHORUS_API_KEYS is "
                    "unset, so anyone there could use Chorus: set CHORUS_API_KEYS (see "
                    "`chorus keys add`), bind 127.0.0.1, or set CHORUS_INSECURE=1"
                )


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost, or "" (every address)
        return False


def _at_least_one(env: Mapping[str, str], name: str, default: int) -> int:
    value = int_setting(env, name, default)
    if value < 1:
        raise SettingsError(f"{name} must be at least 1, not {value}")
    return value
