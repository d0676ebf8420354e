"""Which model is served, over time: the first load, a watched directory, a followed registry alias.

One implementation for both front doors. A registry alias is followed by delivering each new
version to `ModelHolder.reload` (the version is recorded with the model); a directory is watched
by its metadata.json. Every load runs on the holder's loader thread, so neither the first load
nor a later one ever occupies a request worker, and a failed one keeps the last good model.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from router_model.errors import ArtifactError, ConfigError
from router_model.registry import AliasFollower, RegistryVersion, open_registry
from router_model.serving.config import ServingConfig
from router_model.serving.holder import ModelHolder

log = logging.getLogger("router_model.serving")


class ModelSource:
    """Loads the configured model into a holder and keeps it current until `stop`."""

    def __init__(self, config: ServingConfig, holder: ModelHolder) -> None:
        self.config = config
        self.holder = holder
        self.stopping = threading.Event()
        self.follower = (
            AliasFollower(config.model_uri, open_registry(config.tracking_uri)) if config.model_uri is not None else None
        )

    def _deliver(self, version: RegistryVersion, path: Path) -> None:
        self.holder.reload(path, registry=version)

    def initial_load(self) -> None:
        """Load the directory or the URI's version now; on failure log and leave the holder empty."""
        try:
            if self.follower is not None:
                version, path = self.follower.fetch()
                self._deliver(version, path)
                self.follower.delivered = version.version
            elif self.holder.model_dir is not None:
                self.holder.reload()
        except (ArtifactError, ConfigError) as e:
            log.error("no model loaded, not ready until a reload succeeds: %s", e)
        except Exception:  # noqa: BLE001 - a registry outage at start: not ready, retried by the follower
            log.exception("no model loaded, not ready until a reload succeeds")

    def _load_then_follow(self, interval: float) -> None:
        follower = self.follower
        assert follower is not None
        try:  # the first poll is the initial load; a refused version is not retried until the alias moves
            follower.poll(self._deliver)
        except Exception as e:  # noqa: BLE001 - registry down at start: retried at each poll
            log.error("no model loaded from %s yet: %s", self.config.model_uri, e)
        follower.follow(interval, self.stopping, self._deliver)

    def start(self, *, background: bool = True) -> None:
        """Begin serving: the first load (in a thread when `background`), then follow or watch."""
        config = self.config
        if self.follower is not None and config.follow is not None:
            threading.Thread(target=self._load_then_follow, args=(config.follow,), name="router-follow", daemon=True).start()
        elif self.holder.current is None and (config.model_dir is not None or self.follower is not None):
            if background:
                threading.Thread(target=self.initial_load, name="router-initial-load", daemon=True).start()
            else:
                self.initial_load()
        if config.watch_interval is not None:
            threading.Thread(
                target=self.holder.watch, args=(config.watch_interval, self.stopping), name="router-watch", daemon=True
            ).start()

    def stop(self) -> None:
        self.stopping.set()
