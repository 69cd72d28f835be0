"""Loaded models, at most `max_loaded` at once: the least recently used idle one is evicted."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from services.executor.devices import free_memory
from services.executor.models import LoadedModel, LoadOptions, ModelSpec, load

log = logging.getLogger(__name__)


class ModelPool:
    """Loads on first use (or ahead, with `preload`), keeps the most recently used models.

    A model in use is never evicted; when every loaded model is busy the pool holds one more
    than its bound until one is free.
    """

    def __init__(
        self,
        options: LoadOptions,
        max_loaded: int = 0,  # 0: no bound
        on_change: Callable[[ModelPool], None] = lambda pool: None,
        loader: Callable[[ModelSpec, LoadOptions], LoadedModel] = load,
    ) -> None:
        self._options = options
        self._max = max_loaded
        self._loaded: OrderedDict[ModelSpec, LoadedModel] = OrderedDict()
        self._users: dict[ModelSpec, int] = {}
        self._locks: dict[ModelSpec, asyncio.Lock] = {}
        self._on_change = on_change
        self._loader = loader

    @property
    def device(self) -> str:
        return self._options.device

    @property
    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    async def preload(self, spec: ModelSpec) -> LoadedModel:
        async with self.use(spec) as loaded:
            return loaded

    @asynccontextmanager
    async def use(self, spec: ModelSpec) -> AsyncIterator[LoadedModel]:
        loaded = await self._get(spec)
        self._users[spec] = self._users.get(spec, 0) + 1
        try:
            yield loaded
        finally:
            self._users[spec] -= 1
            self._evict()

    async def _get(self, spec: ModelSpec) -> LoadedModel:
        async with self._locks.setdefault(spec, asyncio.Lock()):  # one load per model at a time
            if spec in self._loaded:
                self._loaded.move_to_end(spec)
                return self._loaded[spec]
            loaded = await asyncio.to_thread(self._loader, spec, self._options)
            self._loaded[spec] = loaded
            self._on_change(self)
            return loaded

    def _evict(self) -> None:
        if self._max <= 0:
            return
        idle = [s for s in self._loaded if not self._users.get(s)]
        while len(self._loaded) > self._max and idle:
            spec = idle.pop(0)
            del self._loaded[spec]
            log.info("evicted %s=%s (least recently used)", spec.task, spec.model)
            free_memory(self._options.device)
            self._on_change(self)
