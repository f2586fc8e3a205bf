"""Which app each run belongs to, read from the store once and kept (apps never change)."""

from __future__ import annotations

from collections import OrderedDict

from fanflow.store import AppRecord, Store

#: runs whose app is remembered; the oldest is forgotten first
RUN_APPS_REMEMBERED = 10_000


class RunApps:
    """The app of a run, cached per run id (least recently added forgotten first)."""

    def __init__(self, store: Store, *, size: int = RUN_APPS_REMEMBERED) -> None:
        self.store = store
        self.size = size
        self._apps: OrderedDict[str, AppRecord] = OrderedDict()

    async def get(self, run_id: str) -> AppRecord | None:
        """The run's app; None when the run or its app is not in the store."""
        app = self._apps.get(run_id)
        if app is not None:
            return app
        run = await self.store.get_run(run_id)
        if run is None:
            return None
        app = await self.store.get_app(run.app_id)
        if app is not None:
            self._apps[run_id] = app
            while len(self._apps) > self.size:
                self._apps.popitem(last=False)
        return app
