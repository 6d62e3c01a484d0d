"""The Dia2 text tokenizer: GPT-2-style byte-level BPE read from the checkpoint's own files, offline.

The reference loads the *slow* transformers tokenizer class, which reads ``vocab.json`` + ``merges.txt`` and
the added tokens (``[S1]``, ``[S2]``, sound tags such as ``(laughs)``) from ``added_tokens.json`` and
``tokenizer_config.json``; it ignores ``tokenizer.json``. transformers 5 no longer has slow classes, so the
same tokenizer is rebuilt here from those same files with the ``tokenizers`` library: the GPT-2 byte-level
pre-tokenizer (the slow class's regex), a plain BPE over the same merges, and the added tokens at their
stored ids, split out before BPE as the slow class does. No normalizer and no prefix space, like the slow
GPT-2 class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from faster_dia.errors import CheckpointError, ModelNotFoundError

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
ADDED_TOKENS_FILE = "added_tokens.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_JSON_FILE = "tokenizer.json"

#: Files the tokenizer cannot do without.
REQUIRED_TOKENIZER_FILES = (VOCAB_FILE, MERGES_FILE)
#: Files read when present (tokenizer.json is not read, but belongs to a complete copy of the tokenizer).
OPTIONAL_TOKENIZER_FILES = (
    ADDED_TOKENS_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_JSON_FILE,
)


class Dia2Tokenizer:
    """Encodes text to token ids; ``encode`` adds no special tokens (the runtime places BOS itself)."""

    def __init__(self, tokenizer: Any, *, bos_token: str | None, directory: Path):
        self._tokenizer = tokenizer
        self.directory = directory
        self.bos_token = bos_token

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        """The id of one vocabulary or added token (e.g. ``"[S1]"``), or None when it has none."""
        return self._tokenizer.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """One more than the largest id: every id this tokenizer produces is below it."""
        return max(self._tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    @property
    def bos_token_id(self) -> int | None:
        """The BOS id the tokenizer files declare (0 for Dia2; the runtime feeds text BOS 1 regardless)."""
        return self.token_id(self.bos_token) if self.bos_token else None


def load_tokenizer(directory: str | os.PathLike) -> Dia2Tokenizer:
    """Load the tokenizer from a local directory holding ``vocab.json``, ``merges.txt`` and the added tokens."""
    from tokenizers import Tokenizer

    directory = Path(directory)
    for name in REQUIRED_TOKENIZER_FILES:
        if not (directory / name).is_file():
            raise ModelNotFoundError(
                f"The tokenizer directory {directory} has no file {name!r}; pass the checkpoint directory "
                "holding the tokenizer files."
            )
    vocab = _read_json(directory / VOCAB_FILE)
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vocab.items()
    ):
        raise CheckpointError(
            f"The tokenizer vocabulary {directory / VOCAB_FILE} is not a map of tokens to ids."
        )
    merges = _read_merges(directory / MERGES_FILE)
    config = _read_optional_json(directory / TOKENIZER_CONFIG_FILE)
    special_map = _read_optional_json(directory / SPECIAL_TOKENS_MAP_FILE)
    added = _added_tokens(directory, vocab, config, special_map)

    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    try:
        tokenizer = Tokenizer.from_str(json.dumps(spec))
    except Exception as exc:  # the tokenizers library raises plain Exceptions with its own messages
        raise CheckpointError(
            f"The tokenizer files in {directory} do not form a BPE tokenizer ({exc})."
        ) from exc
    return Dia2Tokenizer(
        tokenizer,
        bos_token=_token_text(config.get("bos_token") or special_map.get("bos_token")),
        directory=directory,
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"The tokenizer file {path} cannot be read as JSON ({exc}).") from exc


def _read_optional_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    value = _read_json(path)
    if not isinstance(value, dict):
        raise CheckpointError(f"The tokenizer file {path} is not a JSON object.")
    return value


def _read_merges(path: Path) -> list[list[str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"The tokenizer merges {path} cannot be read ({exc}).") from exc
    merges = []
    for number, line in enumerate(lines, start=1):
        # The first line may be a "#version: ..." header, as the slow class allows.
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise CheckpointError(f"The tokenizer merges {path} has a malformed line {number}: {line!r}.")
        merges.append(parts)
    return merges


def _token_text(value: Any) -> str | None:
    # special_tokens_map.json and tokenizer_config.json store either a string or an AddedToken dict.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _added_tokens(directory: Path, vocab: dict[str, int], config: dict, special_map: dict) -> list[dict]:
    """Added tokens at their stored ids, from tokenizer_config.json's ``added_tokens_decoder`` and added_tokens.json."""
    special = {_token_text(t) for t in special_map.get("additional_special_tokens", []) or []}
    special |= {_token_text(v) for k, v in special_map.items() if k != "additional_special_tokens"}
    entries: dict[str, dict] = {}
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise CheckpointError(f"The tokenizer config in {directory} has a malformed 'added_tokens_decoder'.")
    for key, token in decoder.items():
        if not isinstance(token, dict) or not isinstance(token.get("content"), str) or not str(key).isdigit():
            raise CheckpointError(f"The tokenizer config in {directory} has a malformed added token {key!r}.")
        entries[token["content"]] = {
            "id": int(key),
            "content": token["content"],
            "single_word": bool(token.get("single_word", False)),
            "lstrip": bool(token.get("lstrip", False)),
            "rstrip": bool(token.get("rstrip", False)),
            "normalized": bool(token.get("normalized", False)),
            "special": bool(token.get("special", False)),
        }
    added_file = _read_optional_json(directory / ADDED_TOKENS_FILE)
    for content, token_id in added_file.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            raise CheckpointError(
                f"The tokenizer file {directory / ADDED_TOKENS_FILE} maps {content!r} to {token_id!r}."
            )
        if content in entries and entries[content]["id"] != token_id:
            raise CheckpointError(
                f"The tokenizer files in {directory} give the added token {content!r} two ids "
                f"({entries[content]['id']} and {token_id})."
            )
        entries.setdefault(
            content,
            {
                "id": token_id,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": content in special,
            },
        )
    for entry in entries.values():
        in_vocab = vocab.get(entry["content"])
        if in_vocab is not None and in_vocab != entry["id"]:
            raise CheckpointError(
                f"The tokenizer files in {directory} give {entry['content']!r} id {entry['id']} as an added "
                f"token but id {in_vocab} in {VOCAB_FILE}."
            )
    return sorted(entries.values(), key=lambda entry: entry["id"])
