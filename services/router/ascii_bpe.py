"""An exact fast path for tokenizing ASCII text with a GPT-2 style byte-level BPE tokenizer
(SmolLM2's, among many).

The Rust tokenizer spends most of a chat prompt's encoding in its pre-tokenizer regex. For ASCII
text that regex has a plain equivalent (``\\p{L}`` is ``[A-Za-z]``, ``\\p{N}`` is ``[0-9]``,
``\\s`` the six ASCII white-space characters), and byte-level BPE encodes each pre-token on its
own, so a pre-token's ids can be remembered. What this does, step by step, is what the
tokenizer does: split on added tokens, pre-tokenize each piece with the GPT-2 pattern, map bytes
to the byte-level alphabet, run the tokenizer's own BPE model on each (new) pre-token.

Anything else takes the tokenizer's own path: text with a non-ASCII character (Unicode property
tables could differ between regex engines), and tokenizers of any other shape (another
pre-tokenizer, a normalizer, BPE dropout, added tokens that strip white space), for which
``for_tokenizer`` returns None.
"""

from __future__ import annotations

import json
import re
from typing import Any

_WHITE = "\\t\\n\\x0b\\x0c\\r "
# tokenizers' ByteLevel pattern with its Unicode classes reduced to ASCII.
_PRE_TOKEN = re.compile(
    rf"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_WHITE}A-Za-z0-9]+"
    rf"|[{_WHITE}]+(?![^{_WHITE}])|[{_WHITE}]+")


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (ASCII part)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return {byte: mapping[byte] for byte in range(128)}


class AsciiByteLevelBPE:
    """``encode(text)`` equals ``tokenizer.encode(text, add_special_tokens=False).ids``."""

    def __init__(self, backend: Any, added: dict[str, int], max_cached_words: int) -> None:
        self.backend = backend
        """The ``tokenizers.Tokenizer`` (its BPE model, and the path for non-ASCII text)."""
        self.max_cached_words = max_cached_words
        """Bound of the pre-token cache (it stops growing there)."""
        self._model = backend.model
        self._added = added
        longest_first = sorted(added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") \
            if added else None
        self._alphabet = _byte_level_alphabet()
        self._words: dict[str, list[int]] = {}

    @classmethod
    def for_tokenizer(cls, backend: Any, max_cached_words: int = 200_000
                      ) -> AsciiByteLevelBPE | None:
        """The fast path for ``backend`` (a ``tokenizers.Tokenizer``), or None when the
        tokenizer is not of the shape it reproduces exactly."""
        config = json.loads(backend.to_str())
        pre = config.get("pre_tokenizer") or {}
        model = config.get("model") or {}
        if config.get("normalizer") is not None or pre.get("type") != "ByteLevel" \
                or pre.get("add_prefix_space") or not pre.get("use_regex", True) \
                or model.get("type") != "BPE" or model.get("dropout") is not None:
            return None
        added: dict[str, int] = {}
        for token in config.get("added_tokens", []):
            if token.get("lstrip") or token.get("rstrip") or token.get("single_word") \
                    or not token["content"].isascii():
                return None
            added[token["content"]] = token["id"]
        return cls(backend, added, max_cached_words)

    def encode(self, text: str) -> list[int]:
        if not text.isascii():
            return list(self.backend.encode(text, add_special_tokens=False).ids)
        if self._split is None:
            return self._encode_piece(text, [])
        ids: list[int] = []
        for index, piece in enumerate(self._split.split(text)):
            if index % 2:
                ids.append(self._added[piece])
            elif piece:
                self._encode_piece(piece, ids)
        return ids

    def _encode_piece(self, piece: str, ids: list[int]) -> list[int]:
        words = self._words
        for word in _PRE_TOKEN.findall(piece):
            word_ids = words.get(word)
            if word_ids is None:
                word_ids = [token.id for token in
                            self._model.tokenize(word.translate(self._alphabet))]
                if len(words) < self.max_cached_words:
                    words[word] = word_ids
            ids.extend(word_ids)
        return ids
