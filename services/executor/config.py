"""Executor settings: which models this replica serves, where, how much at once, and from where
it may read inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.roles import Lane
from services.common.routes import LLM_ROUTE, REMOTE_ROUTE
from services.common.settings import (
    Settings,
    SettingsError,
    bool_setting,
    float_setting,
    int_setting,
    require_url,
)
from services.common.tasks import LLM_TASKS
from services.executor.fetch import FetchPolicy
from services.executor.handlers import HANDLERS
from services.executor.models import LoadOptions, ModelSpec, default_specs, discover_cached

REMOTE_ENDPOINT = "https://router.huggingface.co/hf-inference"
_DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ExecutorConfig:
    specs: tuple[ModelSpec, ...]  # asked for: a model that fails to load stops start-up
    defaults: tuple[ModelSpec, ...]  # built-in, bundled and cached: one that fails is skipped
    load: LoadOptions
    capacity: int  # invocations in flight on this replica, over all its models
    preload: bool  # load every model at start; False: on first use
    max_loaded: int  # models kept loaded at once (0: no bound); idle ones are evicted LRU
    batch_size: int
    batch_wait_s: float
    serve_llm: bool  # run the text tasks of `tasks.LLM_TASKS` on the configured LLM
    remote: bool  # run Hub models remotely through huggingface_hub's InferenceClient
    remote_endpoint: str
    hf_token: str | None
    remote_timeout_s: float
    fetch: FetchPolicy

    @property
    def device(self) -> str:
        return self.load.device

    @classmethod
    def from_env(cls, env: Mapping[str, str], llm_configured: bool = False) -> ExecutorConfig:
        """`CHORUS_EXECUTOR_MODELS` is `TASK=MODEL` pairs separated by `;`.

        Unless `CHORUS_EXECUTOR_DEFAULTS=0`, the replica also serves the built-in and bundled
        models and what the local Hugging Face cache holds, for tasks no given model covers,
        and the LLM's text tasks when an LLM is configured.
        """
        load = _load_options(env)
        specs = _specs(env)
        with_defaults = bool_setting(env, "CHORUS_EXECUTOR_DEFAULTS", True)
        defaults: list[ModelSpec] = []
        if with_defaults:
            covered = {s.task for s in specs}
            defaults = [s for s in default_specs() + discover_cached() if s.task not in covered]
        serve_llm = with_defaults and llm_configured
        remote = bool_setting(env, "CHORUS_REMOTE_INFERENCE", False)
        if not specs and not defaults and not remote and not serve_llm:
            raise SettingsError(
                "nothing to serve: give --model TASK=MODEL (CHORUS_EXECUTOR_MODELS), "
                "set CHORUS_REMOTE_INFERENCE=1, or leave CHORUS_EXECUTOR_DEFAULTS unset"
            )
        batch_size = max(int_setting(env, "CHORUS_BATCH_SIZE", 8), 1)
        return cls(
            specs=tuple(specs),
            defaults=tuple(defaults),
            load=load,
            capacity=max(int_setting(env, "CHORUS_EXECUTOR_CAPACITY", max(batch_size, 2)), 1),
            preload=_preload(env),
            max_loaded=int_setting(env, "CHORUS_EXECUTOR_MAX_LOADED", 0),
            batch_size=batch_size,
            batch_wait_s=int_setting(env, "CHORUS_BATCH_WAIT_MS", 5) / 1000,
            serve_llm=serve_llm,
            remote=remote,
            remote_endpoint=_endpoint(env),
            hf_token=env.get("HF_TOKEN") or None,
            remote_timeout_s=float_setting(env, "CHORUS_REMOTE_TIMEOUT", 60.0),
            fetch=_fetch_policy(env),
        )


def planned_lanes(config: ExecutorConfig) -> list[Lane]:
    """The (task, route) lanes a replica with this config serves: its consumers (less any
    default model that then fails to load; `service.build` makes the routed ones from this
    list), and so what its NATS user may consume on a locked bus (`roles.executor_role`)."""
    lanes = [(spec.task, spec.model) for spec in (*config.specs, *config.defaults)]
    if config.serve_llm:
        lanes += [(task, LLM_ROUTE) for task in sorted(LLM_TASKS)]
    if config.remote:
        lanes += [(h.task, REMOTE_ROUTE) for h in HANDLERS.values() if h.remote is not None]
    return lanes


def lanes_from_env(env: Mapping[str, str]) -> list[Lane]:
    """The lanes of an executor started with these variables (`chorus up` makes its user)."""
    return planned_lanes(ExecutorConfig.from_env(env, Settings.from_env(env).llm.configured))


def _specs(env: Mapping[str, str]) -> list[ModelSpec]:
    raw = env.get("CHORUS_EXECUTOR_MODELS", "").strip()
    try:
        return [ModelSpec.parse(s) for s in raw.split(";") if s.strip()]
    except ValueError as e:
        raise SettingsError(f"CHORUS_EXECUTOR_MODELS: {e}") from e


def _load_options(env: Mapping[str, str]) -> LoadOptions:
    device = env.get("CHORUS_DEVICE", "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise SettingsError(f"CHORUS_DEVICE must be cpu or cuda[:N], not {device!r}")
    dtype = env.get("CHORUS_DTYPE", "auto")
    if dtype not in _DTYPES:
        raise SettingsError(f"CHORUS_DTYPE must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    offline = env.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    return LoadOptions(
        device=device,
        dtype=dtype,
        allow_download=bool_setting(env, "CHORUS_ALLOW_DOWNLOAD", True) and not offline,
        controlnet_base=env.get(
            "CHORUS_CONTROLNET_BASE", "stable-diffusion-v1-5/stable-diffusion-v1-5"
        ),
        diffusion_steps=int_setting(env, "CHORUS_DIFFUSION_STEPS", 0) or None,
    )


def _preload(env: Mapping[str, str]) -> bool:
    when = env.get("CHORUS_EXECUTOR_LOAD", "start")
    if when not in ("start", "first-use"):
        raise SettingsError(f"CHORUS_EXECUTOR_LOAD must be 'start' or 'first-use', not {when!r}")
    return when == "start"


def _endpoint(env: Mapping[str, str]) -> str:
    endpoint = env.get("CHORUS_REMOTE_ENDPOINT", REMOTE_ENDPOINT)
    require_url("CHORUS_REMOTE_ENDPOINT", endpoint, ("http", "https"))
    return endpoint


def _fetch_policy(env: Mapping[str, str]) -> FetchPolicy:
    root = env.get("CHORUS_INPUT_ROOT") or None
    if root is not None and not Path(root).expanduser().is_dir():
        raise SettingsError(f"CHORUS_INPUT_ROOT is not a directory: {root!r}")
    return FetchPolicy(
        allow_urls=bool_setting(env, "CHORUS_FETCH_URLS", False),
        max_bytes=int_setting(env, "CHORUS_FETCH_MAX_BYTES", 20 * 1024 * 1024),
        timeout_s=float_setting(env, "CHORUS_FETCH_TIMEOUT", 10.0),
        input_root=Path(root).expanduser() if root else None,
    )
