"""Executor settings: which models this replica serves, on which device, how much at once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.settings import SettingsError, int_setting
from services.executor.models import ModelSpec, default_specs, discover_cached


@dataclass(frozen=True)
class ExecutorConfig:
    specs: tuple[ModelSpec, ...]  # asked for: a model that fails to load stops start-up
    defaults: tuple[ModelSpec, ...]  # built-in, bundled and cached: one that fails is skipped
    device: str
    capacity: int
    allow_download: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ExecutorConfig:
        """`CHORUS_EXECUTOR_MODELS` is `TASK=MODEL` pairs separated by `;`.

        Unless `CHORUS_EXECUTOR_DEFAULTS=0`, the replica also serves the built-in and bundled
        models and what the local Hugging Face cache holds, for tasks no given model covers.
        """
        device = env.get("CHORUS_DEVICE", "cpu")
        if device != "cpu" and not device.startswith("cuda"):
            raise SettingsError(f"CHORUS_DEVICE must be cpu or cuda[:N], not {device!r}")
        raw = env.get("CHORUS_EXECUTOR_MODELS", "").strip()
        try:
            specs = [ModelSpec.parse(s) for s in raw.split(";") if s.strip()]
        except ValueError as e:
            raise SettingsError(f"CHORUS_EXECUTOR_MODELS: {e}") from e
        defaults: list[ModelSpec] = []
        if env.get("CHORUS_EXECUTOR_DEFAULTS", "1") != "0":
            covered = {s.task for s in specs}
            defaults = [s for s in default_specs() + discover_cached() if s.task not in covered]
        if not specs and not defaults:
            raise SettingsError(
                "nothing to serve: give --model TASK=MODEL (CHORUS_EXECUTOR_MODELS) "
                "or leave CHORUS_EXECUTOR_DEFAULTS unset"
            )
        capacity = int_setting(env, "CHORUS_EXECUTOR_CAPACITY", 2)
        offline = env.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        allow = env.get("CHORUS_ALLOW_DOWNLOAD", "1") != "0" and not offline
        return cls(tuple(specs), tuple(defaults), device, max(capacity, 1), allow)
