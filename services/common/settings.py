"""Settings from `CHORUS_*` environment variables, read once in `main`, never at import."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from services.common.roles import login_inbox_prefix

N = TypeVar("N", int, float)


DEFAULT_STREAM_MAX_BYTES = 1024**3  # each stream's bound (CHORUS_STREAM_MAX_BYTES)
DEFAULT_ARTIFACT_MAX_BYTES = 16 * 1024**3  # the artifact bucket's (CHORUS_ARTIFACT_MAX_BYTES)
# Task outputs up to this size travel inside the messages between stages as well as in the
# object store (CHORUS_INLINE_MAX_BYTES): the next task reads them without a round trip.
DEFAULT_INLINE_MAX_BYTES = 64 * 1024
# Well under NATS's 1 MiB max_payload: an invocation carries a few inline inputs at most.
INLINE_MAX_BYTES_LIMIT = 256 * 1024
DEFAULT_CONTEXT_TOKENS = 8192  # the LLM's context window, when CHORUS_LLM_CONTEXT_TOKENS is unset


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class LLMSettings:
    base_url: str | None
    api_key: str | None
    model: str
    timeout_s: float
    max_retries: int
    # The model's context window in tokens: prompts are cut to fit it with room for the reply.
    context_tokens: int = DEFAULT_CONTEXT_TOKENS

    @property
    def configured(self) -> bool:
        """An LLM is used only when a key or a base URL was given."""
        return bool(self.api_key or self.base_url)


@dataclass(frozen=True)
class NatsAuth:
    """How a service proves its role to NATS (a user and password, or a `.creds` file) and,
    for a `tls://` server, which CA it trusts and which client certificate it shows."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    creds: str | None = None  # path of a NATS credentials (JWT + seed) file
    tls_ca: str | None = None  # PEM file of the CA that signed the server's certificate
    tls_cert: str | None = None  # PEM files of a client certificate (NATS with verify)
    tls_key: str | None = None
    # Where replies to this service go (`_INBOX_<user>` for a role's user): on a locked bus a
    # role may subscribe to its own inboxes only. None: the client's default (`_INBOX`).
    inbox_prefix: str | None = None


@dataclass(frozen=True)
class Settings:
    nats_url: str
    grpc_addr: str
    openai_addr: str  # host:port of the OpenAI-compatible HTTP endpoint; empty: not served
    metrics_port: int
    metrics_host: str  # the address /metrics and the probes listen on (127.0.0.1 under chorus up)
    llm: LLMSettings
    planner: str  # "auto" (LLM when configured) | "rules"
    max_upload_bytes: int
    task_deadline_s: float  # from dispatch, queueing included (selector) / per run (executor)
    worker_ttl_s: float
    log_level: str
    stream_replicas: int  # JetStream replicas of every stream and bucket (3 on a NATS cluster)
    nats_auth: NatsAuth = field(default_factory=NatsAuth)
    stream_max_bytes: int = DEFAULT_STREAM_MAX_BYTES
    artifact_max_bytes: int = DEFAULT_ARTIFACT_MAX_BYTES
    inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES  # 0: every output through the store only
    uvloop: bool = True  # CHORUS_UVLOOP=0: the stock asyncio loop even where uvloop is installed
    # The variables these were read from, for a stage's own settings (e.g. the executor's).
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        base_url = env.get("CHORUS_LLM_BASE_URL") or None
        if base_url is not None:
            require_url("CHORUS_LLM_BASE_URL", base_url, ("http", "https"))
        nats_url = env.get("CHORUS_NATS_URL", "nats://127.0.0.1:4222")
        for server in nats_url.split(","):  # a cluster's nodes may be listed, comma-separated
            require_url("CHORUS_NATS_URL", server.strip(), ("nats", "tls", "ws", "wss"))
        planner = env.get("CHORUS_PLANNER", "auto")
        if planner not in ("auto", "rules"):
            raise SettingsError(f"CHORUS_PLANNER must be 'auto' or 'rules', not {planner!r}")
        return cls(
            nats_url=nats_url,
            grpc_addr=env.get("CHORUS_GRPC_ADDR", "127.0.0.1:50051"),
            openai_addr=_host_port(env, "CHORUS_OPENAI_ADDR"),
            metrics_port=int_setting(env, "CHORUS_METRICS_PORT", 0),
            # Every address by default: in a pod, Prometheus and the kubelet come from outside.
            metrics_host=env.get("CHORUS_METRICS_HOST", "0.0.0.0").strip() or "0.0.0.0",
            llm=LLMSettings(
                base_url=base_url,
                api_key=env.get("CHORUS_LLM_API_KEY") or env.get("OPENAI_API_KEY") or None,
                model=env.get("CHORUS_LLM_MODEL", "gpt-4o-mini"),
                timeout_s=float_setting(env, "CHORUS_LLM_TIMEOUT", 30.0),
                max_retries=int_setting(env, "CHORUS_LLM_MAX_RETRIES", 2),
                context_tokens=_context_tokens(env),
            ),
            planner=planner,
            max_upload_bytes=int_setting(env, "CHORUS_MAX_UPLOAD_BYTES", 64 * 1024 * 1024),
            task_deadline_s=float_setting(env, "CHORUS_TASK_DEADLINE", 300.0),
            worker_ttl_s=float_setting(env, "CHORUS_WORKER_TTL", 10.0),
            log_level=_log_level(env),
            stream_replicas=_replicas(env),
            nats_auth=_nats_auth(env),
            stream_max_bytes=int_setting(env, "CHORUS_STREAM_MAX_BYTES", DEFAULT_STREAM_MAX_BYTES),
            artifact_max_bytes=int_setting(
                env, "CHORUS_ARTIFACT_MAX_BYTES", DEFAULT_ARTIFACT_MAX_BYTES
            ),
            inline_max_bytes=_inline_max_bytes(env),
            uvloop=bool_setting(env, "CHORUS_UVLOOP", True),
            env=dict(env),
        )


def _nats_auth(env: Mapping[str, str]) -> NatsAuth:
    files = {}
    for name in ("CREDS", "TLS_CA", "TLS_CERT", "TLS_KEY"):
        path = env.get(f"CHORUS_NATS_{name}", "").strip() or None
        if path is not None and not os.access(path, os.R_OK):
            raise SettingsError(f"CHORUS_NATS_{name}: cannot read the file {path}")
        files[name.lower()] = path
    if (files["tls_cert"] is None) != (files["tls_key"] is None):
        raise SettingsError("CHORUS_NATS_TLS_CERT and CHORUS_NATS_TLS_KEY go together")
    user = env.get("CHORUS_NATS_USER", "").strip() or None
    password = env.get("CHORUS_NATS_PASSWORD") or None
    if (user is None) != (password is None):
        raise SettingsError("CHORUS_NATS_USER and CHORUS_NATS_PASSWORD go together")
    prefix = env.get("CHORUS_NATS_INBOX_PREFIX", "").strip() or None
    if prefix is None:
        creds = files["creds"]
        login = user or (_credentials_name(creds) if creds else None)
        prefix = login_inbox_prefix(login) if login else None
    if prefix is not None and not _SUBJECT_PREFIX.fullmatch(prefix):
        raise SettingsError(
            f"CHORUS_NATS_INBOX_PREFIX must be subject tokens without wildcards: {prefix!r}"
        )
    return NatsAuth(user=user, password=password, inbox_prefix=prefix, **files)


_SUBJECT_PREFIX = re.compile(r"[^.*>\s]+(\.[^.*>\s]+)*")


def _credentials_name(path: str) -> str | None:
    """The name in the user JWT of a `.creds` file (the role's user), if it has one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"CHORUS_NATS_CREDS: cannot read the file {path}: {e}") from e
    found = re.search(r"-+BEGIN NATS USER JWT-+\s*(\S+)", text)
    if found is None:
        raise SettingsError(f"CHORUS_NATS_CREDS: no user JWT in {path}")
    try:
        payload = found.group(1).split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as e:
        raise SettingsError(f"CHORUS_NATS_CREDS: the user JWT in {path} is malformed") from e
    name = claims.get("name") if isinstance(claims, dict) else None
    return name if isinstance(name, str) and name else None


def _host_port(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    _host, sep, port = value.rpartition(":")
    if value and (not sep or not port.isdigit() or not 0 <= int(port) < 65536):
        raise SettingsError(f"{name} is not host:port: {value!r}")
    return value


def _inline_max_bytes(env: Mapping[str, str]) -> int:
    limit = int_setting(env, "CHORUS_INLINE_MAX_BYTES", DEFAULT_INLINE_MAX_BYTES)
    if limit > INLINE_MAX_BYTES_LIMIT:
        raise SettingsError(
            f"CHORUS_INLINE_MAX_BYTES must be at most {INLINE_MAX_BYTES_LIMIT} (messages stay "
            f"well under NATS's max_payload), not {limit}"
        )
    return limit


def _context_tokens(env: Mapping[str, str]) -> int:
    tokens = int_setting(env, "CHORUS_LLM_CONTEXT_TOKENS", DEFAULT_CONTEXT_TOKENS)
    if tokens < 1024:
        raise SettingsError(f"CHORUS_LLM_CONTEXT_TOKENS must be at least 1024, not {tokens}")
    return tokens


def _log_level(env: Mapping[str, str]) -> str:
    level = env.get("CHORUS_LOG_LEVEL", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError(
            f"CHORUS_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {level!r}"
        )
    return level


def _replicas(env: Mapping[str, str]) -> int:
    replicas = int_setting(env, "CHORUS_STREAM_REPLICAS", 1)
    if not 1 <= replicas <= 5:
        raise SettingsError(f"CHORUS_STREAM_REPLICAS must be 1 to 5, not {replicas}")
    return replicas


def bool_setting(env: Mapping[str, str], name: str, default: bool) -> bool:
    """`1`/`0` (also `true`/`false`, `yes`/`no`); unset or empty gives the default."""
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise SettingsError(f"{name} must be 0 or 1, not {raw!r}")
    return raw in ("1", "true", "yes")


def require_url(name: str, value: str, schemes: tuple[str, ...]) -> None:
    """Stops start-up unless `value` is a URL of one of `schemes`, naming the variable."""
    parsed = urlparse(value)
    if parsed.scheme not in schemes or not parsed.netloc:
        raise SettingsError(f"{name} is not a {'/'.join(schemes)} URL: {value!r}")


def int_setting(env: Mapping[str, str], name: str, default: int) -> int:
    """A non-negative integer; unset or empty gives the default."""
    value = _number(env, name, int, "an integer")
    if value is None:
        return default
    if value < 0:
        raise SettingsError(f"{name} must not be negative: {value}")
    return value


def float_setting(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds or similar; unset or empty gives the default."""
    value = _number(env, name, float, "a number")
    if value is None:
        return default
    if value <= 0:
        raise SettingsError(f"{name} must be positive: {value}")
    return value


def _number(env: Mapping[str, str], name: str, parse: Callable[[str], N], what: str) -> N | None:
    raw = env.get(name, "")
    if raw == "":
        return None
    try:
        return parse(raw)
    except ValueError as e:
        raise SettingsError(f"{name} is not {what}: {raw!r}") from e
