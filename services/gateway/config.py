"""The gateway's own settings, from `CHORUS_*` variables (the addresses are common settings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.settings import SettingsError, int_setting, require_url


@dataclass(frozen=True)
class GatewayConfig:
    # Where clients reach the gateway, for the file links in answers; "": the address the
    # client used (its Host header), which is right unless a proxy rewrites it.
    public_url: str
    cors_origins: tuple[str, ...]  # origins whose pages may call the HTTP API; ("*",) any
    max_body_bytes: int  # an HTTP request body; images may ride inline as data URLs

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
        return cls(public_url=public_url, cors_origins=origins, max_body_bytes=max_body)
