"""The serving model: one reference, replaced in a single assignment by a verified reload.

Every call reads `ModelHolder.current` once and runs start to finish on that router, so a
reload never mixes two artifacts in one call. One holder serves both front doors: it knows
nothing of gRPC or HTTP (the gRPC server passes `on_serving` to flip health checks), and one
exception policy decides what a failed load is.

Every load (start-up, Reload RPC, SIGHUP, watcher) runs on the holder's one loader thread, in
order: hashing and warming up a model never occupies a request worker, two loads never race,
and the watcher decides whether the directory changed only when its turn comes, after any
Reload before it has recorded what it loaded (so a Reload is not followed by a second load).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from router_model.artifact import METADATA_FILE
from router_model.errors import ArtifactError, ConfigError
from router_model.registry import RegistryVersion
from router_model.router import Router
from router_model.serving.config import ServingConfig

log = logging.getLogger("router_model.serving")


class LoadEvents(Protocol):
    """What a holder reports: each load attempt's result and the version now served (metrics)."""

    def count_reload(self, ok: bool) -> None: ...

    def model_loaded(self, artifact_version: str) -> None: ...

# (inode, size, mtime) of a directory's metadata.json; None when it cannot be read.
Signature = tuple[int, int, int]


@dataclass(frozen=True)
class Loaded:
    """A serving router, the directory it came from and when it was loaded (epoch seconds)."""

    router: Router
    model_dir: Path
    loaded_at: float
    registry: RegistryVersion | None = None  # the registered version, when served by --model-uri


@dataclass(frozen=True)
class ReloadResult:
    previous_version: str | None
    artifact_version: str
    model_dir: Path
    load_ms: int


def directory_signature(model_dir: Path) -> Signature | None:
    """What changes when a deploy replaces the artifact: metadata.json is written last."""
    try:
        st = (model_dir / METADATA_FILE).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ModelHolder:
    """Owns the current router and swaps it atomically on reload."""

    def __init__(
        self,
        config: ServingConfig,
        metrics: LoadEvents,
        on_serving: Callable[[], None] | None = None,
        *,
        router: Router | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._on_serving = on_serving or (lambda: None)
        self._model_dir = config.model_dir
        self._current: Loaded | None = None
        self._lock = threading.Lock()
        # metadata.json of the configured directory at the last load attempt of it
        self._seen: Signature | None = None
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-load")
        self.loads = 0  # load attempts, for tests and logs
        self.ready = threading.Event()
        self.error: str | None = None  # why the last load failed (None after a success)
        if router is not None:  # already loaded by the caller (tests, an embedding application)
            self._current = Loaded(router, router.path, time.time())
            self._model_dir = self._model_dir or router.path  # a reload re-reads its directory
            self._seen = directory_signature(router.path)
            metrics.count_reload(True)
            metrics.model_loaded(router.version)
            self.ready.set()

    @property
    def current(self) -> Loaded | None:
        return self._current

    @property
    def router(self) -> Router | None:
        """The serving router (None until one is loaded)."""
        loaded = self._current
        return loaded.router if loaded is not None else None

    @property
    def model_dir(self) -> Path | None:
        return self._model_dir

    def reload(self, model_dir: Path | str | None = None, registry: RegistryVersion | None = None) -> ReloadResult:
        """Load and verify an artifact beside the serving one, then swap; raise if it fails.

        Runs on the loader thread and waits for it. Raises ArtifactError (bad or unreadable
        artifact) or ConfigError (no directory given or configured); the serving router is
        untouched on any failure.
        """
        return self._loader.submit(self._load, Path(model_dir) if model_dir else None, registry).result()

    def _load(self, model_dir: Path | None, registry: RegistryVersion | None = None) -> ReloadResult:
        with self._lock:
            target = model_dir or self._model_dir
            if target is None:
                raise ConfigError("no model directory configured (--model-dir), nor named in a Reload request")
            started = time.perf_counter()
            signature = directory_signature(target)
            if target == self._model_dir:
                self._seen = signature
            self.loads += 1
            try:
                router = Router.load(target, graph=self._config.graph, threads=self._config.threads)
            except (ArtifactError, ConfigError) as e:
                self._failed(e)
                raise
            except (OSError, ValueError, RecursionError) as e:  # unreadable path or absurd metadata
                error = ArtifactError(f"cannot read the model directory: {e}", file=str(target))
                self._failed(error)
                raise error from None
            except BaseException as e:
                self._failed(e)
                raise
            load_ms = round((time.perf_counter() - started) * 1000)
            previous = self._current
            if registry is None and previous is not None and previous.model_dir == target:
                registry = previous.registry  # re-reading the same version's directory
            self._current = Loaded(router, target, time.time(), registry)
            self._model_dir = target
            self._seen = signature
            self.error = None
            self._metrics.count_reload(True)
            self._metrics.model_loaded(router.version)
            self._on_serving()
            self.ready.set()
        log.info("serving artifact %s from %s (loaded in %d ms)", router.version, target, load_ms)
        return ReloadResult(previous.router.version if previous else None, router.version, target, load_ms)

    def _failed(self, error: BaseException) -> None:
        self.error = str(error)
        self._metrics.count_reload(False)

    def reload_logged(self) -> bool:
        """`reload`, logging instead of raising (SIGHUP, a start-up load): True when it loaded."""
        try:
            self.reload()
            return True
        except (ArtifactError, ConfigError) as e:
            loaded = self._current
            kept = f"still serving {loaded.router.version}" if loaded else "no model loaded"
            log.error("model load failed (%s): %s", kept, e)
            return False

    def reload_if_changed(self) -> None:
        """Reload when the model directory's metadata.json changed since the last attempt.

        metadata.json is written last (and a retrained directory is swapped in whole), so a new
        one means a complete new artifact. A failed attempt is not retried until it changes again.
        The check itself runs on the loader thread, after any reload already queued.
        """
        self._loader.submit(self._reload_if_changed).result()

    def _changed(self) -> bool:
        with self._lock:
            target = self._model_dir
            return target is not None and directory_signature(target) not in (None, self._seen)

    def _reload_if_changed(self) -> None:
        if not self._changed():
            return
        try:
            result = self._load(None)
            log.info("model directory changed: %s -> %s", result.previous_version, result.artifact_version)
        except (ArtifactError, ConfigError) as e:
            log.error("model directory changed but the new artifact is refused, still serving the previous one: %s", e)

    def watch(self, interval: float, stop: threading.Event) -> None:
        """Poll the model directory every `interval` seconds until `stop` is set (a thread's body)."""
        while not stop.wait(interval):
            if not self._changed():  # cheap check first: no queueing behind a load for nothing
                continue
            try:
                self.reload_if_changed()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("watching the model directory failed")

    def close(self) -> None:
        """Stop the loader thread (a load in progress finishes first)."""
        self._loader.shutdown(wait=False, cancel_futures=True)
