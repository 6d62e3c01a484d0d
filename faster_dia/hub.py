"""Resolve a model reference (a local directory or a Hugging Face Hub id) to local files.

Files from the Hub go through huggingface_hub's cache, so a model downloaded once (by faster-dia,
transformers or ``hf download``) is found again without network. Two huggingface_hub behaviours are worked
around here:

* it reads ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` once at import time, so both are read again at call time
  and passed explicitly;
* with no network and no offline flag, a download retries for about 23 seconds before failing, so the cache
  is always tried first and the Hub is probed with a short socket connect before any download.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from faster_dia.errors import ModelNotFoundError

#: Seconds to wait for a TCP connection to the Hub (or the proxy) before declaring it unreachable.
HUB_CONNECT_TIMEOUT_S = 3.0

_DEFAULT_ENDPOINT = "https://huggingface.co"
# An ``org/name`` Hub id: one slash, no path syntax. Anything else is treated as a local path.
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_repo_id(model: str) -> bool:
    """True when ``model`` has the shape of a Hub id ``org/name`` (it may still also exist as a local path)."""
    return bool(_REPO_ID_RE.match(model)) and ".." not in model


def hub_cache_dir() -> Path:
    """The huggingface_hub cache directory, from the environment as it is now."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(os.path.expandvars(os.path.expanduser(cache)))
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(os.path.expanduser(hf_home))) / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT).rstrip("/")


def hub_reachable(endpoint: str | None = None, timeout: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint (or to the configured HTTPS proxy) opens within ``timeout``."""
    url = urlparse(endpoint or hub_endpoint())
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    if proxy and not _bypasses_proxy(url.hostname or ""):
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    host = url.hostname
    if not host:
        return False
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _bypasses_proxy(host: str) -> bool:
    no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    for entry in (e.strip().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


@dataclass
class Repo:
    """A model's files, either in a local directory or in a Hub repository (through the Hub cache).

    Build it with :func:`open_repo`.
    """

    name: str
    local_dir: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    what: str = "model"
    cache_dir: Path | None = None
    _remote_files: set[str] | None = field(default=None, init=False, repr=False)
    _reachable: bool | None = field(default=None, init=False, repr=False)

    @property
    def is_local(self) -> bool:
        return self.local_dir is not None

    def cached(self, filename: str) -> Path | None:
        """Local path of ``filename`` if it is already on disk (never touches the network), else None."""
        if self.local_dir is not None:
            path = self.local_dir / filename
            return path if path.is_file() else None
        return self._cached(filename)

    def can_download(self) -> bool:
        """Whether missing files could be fetched now: a Hub repo, not offline, and the Hub reachable."""
        return self.repo_id is not None and self._online()

    def has(self, filename: str) -> bool:
        """Whether the model has ``filename``: on disk for a local directory; cached, or listed on the Hub."""
        if self.local_dir is not None:
            return (self.local_dir / filename).is_file()
        if self._cached(filename) is not None:
            return True
        if self._online():
            return filename in self._list_remote_files()
        return False

    def get(self, filename: str) -> Path:
        """Local path of ``filename``, downloading it into the Hub cache when needed and possible."""
        if self.local_dir is not None:
            path = self.local_dir / filename
            if not path.is_file():
                raise ModelNotFoundError(
                    f"The {self.what} directory {self.local_dir} has no file {filename!r}; "
                    f"pass a directory holding a complete copy of the {self.what}."
                )
            return path
        cached = self._cached(filename)
        if cached is not None:
            return cached
        if hub_offline():
            raise ModelNotFoundError(self._not_cached_message(filename, "HF_HUB_OFFLINE is set"))
        if not self._online():
            raise ModelNotFoundError(
                self._not_cached_message(filename, f"{hub_endpoint()} cannot be reached")
            )
        return self._download(filename)

    # -- Hub side -------------------------------------------------------------------------------------

    def _cached(self, filename: str) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        assert self.repo_id is not None
        found = try_to_load_from_cache(
            self.repo_id, filename, cache_dir=str(self.cache_dir), revision=self.revision
        )
        # try_to_load_from_cache returns a sentinel object (not a str) for files known not to exist.
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
        return None

    def _online(self) -> bool:
        if hub_offline():
            return False
        if self._reachable is None:
            self._reachable = hub_reachable()
        return self._reachable

    def _list_remote_files(self) -> set[str]:
        if self._remote_files is None:
            from huggingface_hub import HfApi
            from huggingface_hub.errors import HfHubHTTPError

            try:
                files = HfApi(endpoint=hub_endpoint()).list_repo_files(self.repo_id, revision=self.revision)
            except HfHubHTTPError as exc:
                raise ModelNotFoundError(self._hub_error_message(exc)) from exc
            except Exception as exc:
                # Transport errors are the HTTP client's own classes, which vary across huggingface_hub versions.
                raise ModelNotFoundError(self._hub_error_message(exc)) from exc
            self._remote_files = set(files)
        return self._remote_files

    def _download(self, filename: str) -> Path:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        assert self.repo_id is not None
        try:
            path = hf_hub_download(
                self.repo_id,
                filename,
                revision=self.revision,
                cache_dir=str(self.cache_dir),
                endpoint=hub_endpoint(),
            )
        except LocalEntryNotFoundError as exc:
            # Raised when the connection drops after the probe succeeded.
            raise ModelNotFoundError(self._not_cached_message(filename, "the download failed")) from exc
        except HfHubHTTPError as exc:
            raise ModelNotFoundError(self._hub_error_message(exc, filename)) from exc
        except Exception as exc:
            # Transport errors are the HTTP client's own classes, which vary across huggingface_hub versions.
            raise ModelNotFoundError(self._hub_error_message(exc, filename)) from exc
        return Path(path)

    def _ref(self) -> str:
        return f"{self.repo_id}" + (f" at revision {self.revision!r}" if self.revision else "")

    def _not_cached_message(self, filename: str, reason: str) -> str:
        revision = f" --revision {self.revision}" if self.revision else ""
        return (
            f"The {self.what} file {filename!r} of {self._ref()} is not in the Hub cache {self.cache_dir} "
            f"and {reason}; run `hf download {self.repo_id}{revision}` (or `huggingface-cli download "
            f"{self.repo_id}{revision}`) on a machine with network access and copy the cache, "
            f"or pass a local directory holding the {self.what} files."
        )

    def _hub_error_message(self, exc: Exception, filename: str | None = None) -> str:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if isinstance(exc, GatedRepoError):
            problem = "is gated; accept its terms on the Hub and log in with `hf auth login`"
        elif isinstance(exc, RepositoryNotFoundError):
            problem = "does not exist on the Hub (or is private); check the name or pass a local directory"
        elif isinstance(exc, RevisionNotFoundError):
            problem = "has no such revision; check the revision name"
        elif isinstance(exc, EntryNotFoundError):
            problem = f"has no file {filename!r}; check that it is a {self.what} repository"
        else:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problem = f"could not be read from the Hub ({first_line}); retry, or pass a local directory"
        return f"The {self.what} {self._ref()} {problem}."


def open_repo(model: str | os.PathLike, *, revision: str | None = None, what: str = "model") -> Repo:
    """Open a model reference: an existing local directory, or a Hub id ``org/name``.

    An existing directory always wins over a Hub id of the same spelling. ``revision`` (a branch, tag or
    commit) applies to Hub ids only. ``what`` names the thing in error messages ("model", "codec").
    """
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return Repo(name=str(path), local_dir=path.resolve(), what=what)
    if path.exists():
        raise ModelNotFoundError(
            f"The {what} path {text} is a file, not a directory; pass the directory holding the {what} files."
        )
    if isinstance(model, str) and looks_like_repo_id(text):
        return Repo(name=text, repo_id=text, revision=revision, what=what, cache_dir=hub_cache_dir())
    raise ModelNotFoundError(
        f"The {what} {text!r} is not an existing local directory, nor a Hub id of the form 'org/name'; "
        f"pass the directory holding the {what} files or its Hub id."
    )
