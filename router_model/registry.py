"""Serving by registry alias: `models:/NAME@ALIAS` (or `models:/NAME/VERSION`) -> a verified local directory.

`router-train` logs every model directory as an MLflow run artifact (`model/`) and registers it
as a version of the registered model; `router-promote` moves aliases (`@champion`, `@previous`)
between versions. This module is the serving side of that: resolve a URI to a version, download
the version's model directory into a local cache keyed by the store and the version's source
(downloaded beside its final place, verified, then renamed in: a cached directory is always
whole, and is the artifact the version is registered as), and follow an alias.

MLflow is optional here: with the `[train]` extra installed its client is used (imported lazily,
inside the functions that need it), which reads any store, the embedded sqlite one included.
Without it, an `http(s)://` tracking URI is read through MLflow's REST API with urllib, so the
inference-only install can follow an MLflow server. A plain `--model-dir` never comes here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from router_model.artifact import METADATA_FILE, read_metadata, verify_file
from router_model.errors import ArtifactError, ConfigError, RouterError
from router_model.settings import cache_root

__all__ = [
    "ARTIFACT_VERSION_TAG",
    "DEFAULT_TRACKING_URI",
    "AliasFollower",
    "ModelUri",
    "RegistryClient",
    "RegistryError",
    "RegistryVersion",
    "cache_key",
    "default_registry_cache",
    "fetch_version",
    "open_registry",
    "registry_identity",
    "tracking_uri",
    "verify_directory",
]

log = logging.getLogger("router_model.registry")

MODEL_URI_PREFIX = "models:/"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
# The same default as router-train's tracking (training/tracking.py imports it from here).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# The tag of a registered version naming its directory's artifact_version (set by router-train,
# training/tracking.py version_tags; checked against what is downloaded, fetch_version).
ARTIFACT_VERSION_TAG = "artifact_version"
REST_TIMEOUT_SECONDS = 30.0
_NAME = re.compile(r"^[^/@]+$")


class RegistryError(RouterError):
    """The registry cannot be reached, or has no such model, version or alias."""


def tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI: the explicit one, else $MLFLOW_TRACKING_URI, else router-train's default."""
    return explicit or os.environ.get(ENV_TRACKING_URI) or DEFAULT_TRACKING_URI


def default_registry_cache() -> Path:
    """Downloaded versions: `<$ROUTER_CACHE_DIR or ~/.cache/router-model>/registry`."""
    return cache_root() / "registry"


@dataclass(frozen=True)
class ModelUri:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` (the MLflow spelling)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelUri:
        if not text.startswith(MODEL_URI_PREFIX):
            raise ConfigError(f"model URI {text!r} must start with {MODEL_URI_PREFIX} (models:/NAME@ALIAS or models:/NAME/VERSION)")
        rest = text[len(MODEL_URI_PREFIX):].strip("/")
        if "@" in rest:
            name, _, alias = rest.partition("@")
            if _NAME.match(name) and _NAME.match(alias):
                return cls(name, alias=alias)
        elif "/" in rest:
            name, _, version = rest.rpartition("/")
            if _NAME.match(name) and version.isdigit():
                return cls(name, version=version)
        raise ConfigError(f"model URI {text!r} is not models:/NAME@ALIAS or models:/NAME/VERSION (VERSION a number)")

    def __str__(self) -> str:
        return f"{MODEL_URI_PREFIX}{self.name}@{self.alias}" if self.alias else f"{MODEL_URI_PREFIX}{self.name}/{self.version}"


@dataclass(frozen=True)
class RegistryVersion:
    """One registered version: what an alias pointed at when it was resolved."""

    name: str
    version: str
    source: str
    run_id: str = ""
    alias: str | None = None  # the alias it was resolved through, if any
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def uri(self) -> str:
        return f"{MODEL_URI_PREFIX}{self.name}/{self.version}"


class RegistryClient(Protocol):
    """What serving needs from a registry: resolve a URI, download a version's files.

    `uri` is the tracking URI the client reads: with the version's source it keys the local cache.
    """

    uri: str

    def resolve(self, uri: ModelUri) -> RegistryVersion: ...

    def download(self, version: RegistryVersion, dest: Path) -> None: ...


# ------------------------------------------------------------------------------ MLflow's client


class MlflowRegistry:
    """The registry through MLflow's own client (the `[train]` extra): any store, sqlite included."""

    def __init__(self, uri: str) -> None:
        try:
            import mlflow
        except ImportError:
            raise ConfigError(
                f"the tracking URI {uri!r} needs the MLflow client: pip install 'router-model[train]' "
                "(or point --tracking-uri at an MLflow server, read over its REST API)"
            ) from None
        self.uri = uri
        self._mlflow = mlflow
        self.client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)

    def resolve(self, uri: ModelUri) -> RegistryVersion:
        from mlflow.exceptions import MlflowException

        try:
            mv = (self.client.get_model_version_by_alias(uri.name, uri.alias) if uri.alias
                  else self.client.get_model_version(uri.name, str(uri.version)))
        except MlflowException as e:
            raise RegistryError(f"{uri} not found in {self.uri}: {e.message}") from None
        return _version(mv.name, mv.version, mv.source, mv.run_id, uri.alias, dict(mv.tags or {}))

    def download(self, version: RegistryVersion, dest: Path) -> None:
        from mlflow.exceptions import MlflowException

        try:
            source = self.client.get_model_version_download_uri(version.name, version.version)
            self._mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=self.uri)
        except MlflowException as e:
            raise RegistryError(f"cannot download {version.uri} from {self.uri}: {e.message}") from None


def _version(name: str, version: Any, source: str | None, run_id: Any, alias: str | None, tags: dict[str, Any]) -> RegistryVersion:
    return RegistryVersion(str(name), str(version), str(source or ""), str(run_id or ""), alias,
                           tuple(sorted((str(k), str(v)) for k, v in tags.items())))


# ------------------------------------------------------------------------------ MLflow's REST API


class RestRegistry:
    """An MLflow server read over its REST API with urllib: no MLflow install needed.

    Auth as MLflow's client does it: $MLFLOW_TRACKING_TOKEN (bearer) or
    $MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD (basic).
    """

    def __init__(self, uri: str, timeout: float = REST_TIMEOUT_SECONDS) -> None:
        if not re.match(r"^https?://[^/\s]+", uri):
            raise ConfigError(f"the REST registry needs an http(s):// tracking URI, got {uri!r}")
        self.uri = uri.rstrip("/")
        self.timeout = timeout

    def _headers(self) -> dict[str, str]:
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if token:
            return {"Authorization": f"Bearer {token}"}
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if user and password:
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")}
        return {}

    def _get(self, path: str, params: dict[str, str]) -> bytes:
        url = f"{self.uri}/{path}?{urllib.parse.urlencode(params)}"
        req = urllib.request.Request(url, headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - the user's http(s) server
                return bytes(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            raise RegistryError(f"{url}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise RegistryError(f"cannot reach the MLflow server {self.uri}: {e}") from None

    def resolve(self, uri: ModelUri) -> RegistryVersion:
        if uri.alias:
            raw = self._get("api/2.0/mlflow/registered-models/alias", {"name": uri.name, "alias": uri.alias})
        else:
            raw = self._get("api/2.0/mlflow/model-versions/get", {"name": uri.name, "version": str(uri.version)})
        try:
            mv = json.loads(raw)["model_version"]
            tags = {t["key"]: t.get("value", "") for t in mv.get("tags", [])}
            return _version(mv["name"], mv["version"], mv.get("source", ""), mv.get("run_id", ""), uri.alias, tags)
        except (ValueError, KeyError, TypeError) as e:
            raise RegistryError(f"unexpected answer from {self.uri} for {uri}: {e}") from None

    def download(self, version: RegistryVersion, dest: Path) -> None:
        """metadata.json first; it names every other file of the directory (no listing needed)."""
        dest.mkdir(parents=True, exist_ok=True)

        def get(name: str) -> Path:
            data = self._get("model-versions/get-artifact", {"name": version.name, "version": version.version, "path": name})
            path = dest / name
            path.write_bytes(data)
            return path

        get(METADATA_FILE)
        meta = read_metadata(dest)
        for name in sorted(meta.files):  # plain names inside the directory: checked by read_metadata
            get(name)


def open_registry(uri: str | None = None, *, prefer: str = "auto") -> RegistryClient:
    """A registry client for the tracking URI: MLflow's client when installed, else REST for http(s).

    `prefer`: "auto", "mlflow" or "rest" (REST only reads http(s) servers).
    """
    resolved = tracking_uri(uri)
    if prefer not in ("auto", "mlflow", "rest"):
        raise ConfigError(f"prefer must be auto, mlflow or rest, got {prefer!r}")
    is_http = resolved.startswith(("http://", "https://"))
    if prefer == "rest" or (prefer == "auto" and is_http and not _mlflow_installed()):
        return RestRegistry(resolved)
    return MlflowRegistry(resolved)


def _mlflow_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


# ------------------------------------------------------------------------------ the local cache


def verify_directory(path: Path) -> None:
    """Every file metadata.json lists, by sha256 (what Router.load checks, without loading graphs)."""
    meta = read_metadata(path)
    for name, sha in sorted(meta.files.items()):
        verify_file(path, name, sha)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def registry_identity(uri: str) -> str:
    """The store a tracking URI names, spelled one way: a sqlite or file store by its absolute path
    (resolved against the working directory, as MLflow opens it), a server by its lower-cased scheme
    and host, port and path without credentials, query or trailing slash. Two spellings of one store
    get the same identity; two stores never do."""
    text = uri.strip()
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme.startswith("sqlite"):
        path = text.split(":///", 1)[1] if ":///" in text else parts.path
        path = path.split("?", 1)[0]
        return f"{scheme}:///{Path(path).expanduser().resolve()}" if path and path != ":memory:" else text
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):  # a plain path, or file:// (a file store)
        path = urllib.parse.unquote(parts.path) if scheme == "file" else text
        return f"file://{Path(path).expanduser().resolve()}"
    if parts.hostname is None:  # databricks, databricks://profile, ...: only the spelling identifies it
        return text.rstrip("/")
    host = parts.hostname.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    port = f":{parts.port}" if parts.port is not None and parts.port != default else ""
    return f"{scheme}://{host}{port}{parts.path.rstrip('/')}"


def cache_key(registry_uri: str, version: RegistryVersion) -> str:
    """16 hex digits naming one registered version of one store: sha256 of the store's identity
    (`registry_identity`), the version's run id and its source (artifact URI). Version numbers
    repeat across stores (staging and production, a store reset), so they are not a key."""
    text = json.dumps([registry_identity(registry_uri), version.name, version.version, version.run_id, version.source])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_registered_version(path: Path, registry_uri: str, version: RegistryVersion) -> None:
    """Refuse a directory that is not the artifact the registry says the version is (its tag
    `artifact_version`, recorded by router-train); a version registered without the tag is
    identified by its cache key only."""
    expected = dict(version.tags).get(ARTIFACT_VERSION_TAG)
    if not expected:
        return
    actual = read_metadata(path).artifact_version
    if actual != expected:
        raise ArtifactError(
            f"{version.uri} in {registry_uri} is registered as artifact_version {expected!r}, but its source "
            f"{version.source} (run {version.run_id or '?'}) holds {actual!r}; refusing to use it",
            file=METADATA_FILE,
        )


def fetch_version(registry: RegistryClient, version: RegistryVersion, cache: Path | None = None) -> Path:
    """The version's model directory in the local cache, downloaded and verified on first use.

    `<cache>/<name>/<version>/<key>/`, where `key` (`cache_key`) names the registry's identity and
    the version's run id and source: the same version number in another store (or in a store
    reset since) is another directory. It is written as a temporary sibling, verified (every
    file's sha256, and the artifact_version the version is registered with), then renamed into
    place, so a reader (another server sharing the cache) never sees half a directory. Versions
    are immutable in the registry, so a cached one is reused (its artifact_version checked again;
    Router.load verifies its files).
    """
    root = (cache or default_registry_cache()) / _safe(version.name)
    final = root / _safe(version.version) / cache_key(registry.uri, version)
    if (final / METADATA_FILE).is_file():
        _check_registered_version(final, registry.uri, version)
        return final
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{_safe(version.version)}.", dir=root))
    try:
        registry.download(version, work / "download")
        src = work / "download"
        if not (src / METADATA_FILE).is_file():  # a client may nest the directory under its own name
            inner = [p for p in src.iterdir() if p.is_dir() and (p / METADATA_FILE).is_file()] if src.is_dir() else []
            if len(inner) != 1:
                raise ArtifactError(f"{version.uri} ({version.source}) holds no router-model directory", file=METADATA_FILE)
            src = inner[0]
        verify_directory(src)
        _check_registered_version(src, registry.uri, version)
        final.parent.mkdir(exist_ok=True)  # only now: a refused version leaves nothing under its number
        try:
            src.rename(final)
        except OSError:
            if not (final / METADATA_FILE).is_file():  # lost a race with a concurrent fetch: use theirs
                raise
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------ following an alias


class AliasFollower:
    """Resolve a model URI and deliver each new version, verified, to a callback (a server's reload).

    A version whose download fails verification, or whose delivery raises ArtifactError, is
    remembered and not retried until the alias moves again; any other failure (registry down)
    is retried at the next poll. The serving model is never touched by a failure here.
    """

    def __init__(self, uri: ModelUri | str, registry: RegistryClient, cache: Path | None = None) -> None:
        self.uri = ModelUri.parse(uri) if isinstance(uri, str) else uri
        self.registry = registry
        self.cache = cache
        self.delivered: str | None = None  # the version last delivered successfully
        self._refused: str | None = None

    def fetch(self) -> tuple[RegistryVersion, Path]:
        """Resolve the URI now and make sure its version is in the cache."""
        version = self.registry.resolve(self.uri)
        return version, fetch_version(self.registry, version, self.cache)

    def poll(self, deliver: Callable[[RegistryVersion, Path], Any]) -> bool:
        """One check: deliver the alias's version if it moved; True when something was delivered."""
        version = self.registry.resolve(self.uri)
        if version.version in (self.delivered, self._refused):
            return False
        try:
            path = fetch_version(self.registry, version, self.cache)
            deliver(version, path)
        except ArtifactError as e:
            self._refused = version.version
            log.error("%s moved to version %s, which is refused (still serving %s): %s",
                      self.uri, version.version, self.delivered, e)
            return False
        self.delivered = version.version
        self._refused = None
        log.info("%s: now serving version %s", self.uri, version.version)
        return True

    def follow(self, interval: float, stop: threading.Event, deliver: Callable[[RegistryVersion, Path], Any]) -> None:
        """Poll every `interval` seconds until `stop` is set (a thread's body); never raises."""
        while not stop.wait(interval):
            try:
                self.poll(deliver)
            except Exception as e:  # noqa: BLE001 - the follower must outlive a registry outage
                log.warning("following %s: %s (still serving version %s)", self.uri, e, self.delivered)
