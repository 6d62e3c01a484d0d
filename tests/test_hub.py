"""Model references: local directories, Hub ids through a seeded cache, revisions, offline failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from faster_dia.errors import ModelNotFoundError
from faster_dia.hub import hub_cache_dir, hub_offline, looks_like_repo_id, open_repo
from faster_dia.models.dia1.checkpoint import (
    LAYOUT_HF_SAFETENSORS,
    LAYOUT_NARI_SAFETENSORS,
    load_checkpoint,
)
from faster_dia.models.dia1.config import VARIANT_0626, VARIANT_ORIGINAL
from faster_dia.testing import seed_hub_cache, write_tiny_checkpoint

REPO = "tiny-org/tiny-dia"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {kind: write_tiny_checkpoint(kind, root / kind) for kind in ("dia-1.6b", "dia-1.6b-0626")}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    cache_dir = tmp_path / "hub-cache"
    cache_dir.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache_dir


def test_repo_id_shape():
    assert looks_like_repo_id("nari-labs/Dia-1.6B-0626")
    assert looks_like_repo_id("descript/dac_44khz")
    for text in ("Dia-1.6B", "a/b/c", "/abs/path", "./rel/path", "../x", "org/../x", "~/models", "org/"):
        assert not looks_like_repo_id(text), text


def test_local_directory(sources):
    repo = open_repo(sources["dia-1.6b"])
    assert repo.is_local and repo.local_dir == sources["dia-1.6b"].resolve()
    assert repo.name == str(sources["dia-1.6b"])
    assert repo.has("config.json") and not repo.has("pytorch_model.bin")
    assert repo.get("config.json") == repo.local_dir / "config.json"
    with pytest.raises(ModelNotFoundError, match="pytorch_model.bin"):
        repo.get("pytorch_model.bin")


def test_nonexistent_local_path(tmp_path):
    missing = str(tmp_path / "no" / "such" / "model")
    with pytest.raises(ModelNotFoundError, match="not an existing local directory") as error:
        open_repo(missing)
    assert missing in str(error.value)
    with pytest.raises(ModelNotFoundError, match="some-model"):
        load_checkpoint("./some-model")


def test_file_instead_of_directory(sources):
    with pytest.raises(ModelNotFoundError, match="is a file, not a directory"):
        open_repo(sources["dia-1.6b"] / "config.json")


def test_existing_directory_wins_over_repo_id(sources, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = Path("tiny-org") / "tiny-dia"
    local.parent.mkdir()
    os.symlink(sources["dia-1.6b"], local)
    repo = open_repo(REPO)
    assert repo.is_local
    assert load_checkpoint(REPO).layout == LAYOUT_NARI_SAFETENSORS


def test_seeded_cache_by_repo_id(sources, cache):
    snapshot = seed_hub_cache(cache, REPO, sources["dia-1.6b-0626"])
    assert snapshot.parent.parent == cache / "models--tiny-org--tiny-dia"
    assert (cache / "models--tiny-org--tiny-dia" / "refs" / "main").read_text() == snapshot.name
    repo = open_repo(REPO)
    assert not repo.is_local and repo.name == REPO
    assert repo.has("model.safetensors.index.json") and not repo.has("pytorch_model.bin")
    assert repo.get("config.json") == snapshot / "config.json"
    ckpt = load_checkpoint(REPO)
    assert ckpt.source == REPO
    assert ckpt.layout == LAYOUT_HF_SAFETENSORS and ckpt.variant == VARIANT_0626
    assert all(snapshot in path.parents for path in ckpt.files)


def test_seeded_cache_is_found_by_huggingface_hub(sources, cache):
    snapshot = seed_hub_cache(cache, REPO, sources["dia-1.6b"])
    # huggingface_hub reads HF_HUB_CACHE at import time, hence a fresh interpreter.
    code = f"from huggingface_hub import hf_hub_download; print(hf_hub_download({REPO!r}, 'config.json'))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == snapshot / "config.json"


def test_revisions(sources, cache):
    seed_hub_cache(cache, REPO, sources["dia-1.6b-0626"])
    seed_hub_cache(cache, REPO, sources["dia-1.6b"], revision="v0.1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    seed_hub_cache(cache, REPO, sources["dia-1.6b"], revision=commit)
    assert load_checkpoint(REPO).variant == VARIANT_0626
    assert load_checkpoint(REPO, revision="main").variant == VARIANT_0626
    assert load_checkpoint(REPO, revision="v0.1").variant == VARIANT_ORIGINAL
    assert load_checkpoint(REPO, revision=commit).variant == VARIANT_ORIGINAL
    with pytest.raises(ModelNotFoundError) as error:
        load_checkpoint(REPO, revision="v9")
    assert "'v9'" in str(error.value) and "--revision v9" in str(error.value)


def test_offline_and_not_cached(cache):
    with pytest.raises(ModelNotFoundError) as error:
        load_checkpoint("nari-labs/Dia-1.6B-0626")
    message = str(error.value)
    assert "nari-labs/Dia-1.6B-0626" in message and "'config.json'" in message
    assert "HF_HUB_OFFLINE" in message
    assert "hf download nari-labs/Dia-1.6B-0626" in message and "local directory" in message


def test_hub_unreachable_fails_fast(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    # Nothing listens on the discard port: the connection is refused at once instead of a retry loop.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    repo = open_repo(REPO)
    assert not repo.has("config.json")
    with pytest.raises(ModelNotFoundError, match=r"http://127\.0\.0\.1:9 cannot be reached") as error:
        repo.get("config.json")
    assert f"hf download {REPO}" in str(error.value)


def test_config_cached_but_no_weights(sources, cache, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((sources["dia-1.6b"] / "config.json").read_bytes())
    seed_hub_cache(cache, REPO, partial)
    with pytest.raises(ModelNotFoundError, match="None of the weight files") as error:
        load_checkpoint(REPO)
    assert f"hf download {REPO}" in str(error.value)


def test_environment_is_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub_offline() is expected


class FakeHub:
    """Stands in for the Hub: serves the files of one directory and records the calls."""

    def __init__(self, source: Path, error: Exception | None = None):
        self.source = source
        self.error = error
        self.downloads: list[tuple[str, str, str | None, str]] = []
        self.listings = 0

    def hf_hub_download(self, repo_id, filename, *, revision=None, cache_dir=None, **kwargs):
        if self.error is not None:
            raise self.error
        self.downloads.append((repo_id, filename, revision, cache_dir))
        return str(self.source / filename)

    def list_repo_files(self, api, repo_id, *, revision=None, **kwargs):
        self.listings += 1
        if self.error is not None:
            raise self.error
        return sorted(p.name for p in self.source.iterdir())


@pytest.fixture
def online(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("faster_dia.hub.hub_reachable", lambda *args, **kwargs: True)

    def install(fake: FakeHub) -> FakeHub:
        monkeypatch.setattr("huggingface_hub.hf_hub_download", fake.hf_hub_download)
        monkeypatch.setattr(
            "huggingface_hub.HfApi.list_repo_files",
            lambda api, repo_id, **kwargs: fake.list_repo_files(api, repo_id, **kwargs),
        )
        return fake

    return install


def test_download_when_online(sources, cache, online):
    fake = online(FakeHub(sources["dia-1.6b-0626"]))
    ckpt = load_checkpoint(REPO, revision="v1")
    assert ckpt.layout == LAYOUT_HF_SAFETENSORS
    assert fake.listings == 1
    assert {name for _, name, _, _ in fake.downloads} == {
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    assert all(revision == "v1" and cache_dir == str(cache) for _, _, revision, cache_dir in fake.downloads)


def test_hub_errors_become_model_not_found(sources, online):
    httpx = pytest.importorskip("httpx")
    from huggingface_hub.errors import RepositoryNotFoundError

    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))
    online(FakeHub(sources["dia-1.6b"], error=RepositoryNotFoundError("404", response=response)))
    with pytest.raises(ModelNotFoundError, match="does not exist on the Hub"):
        load_checkpoint("tiny-org/no-such-repo")
