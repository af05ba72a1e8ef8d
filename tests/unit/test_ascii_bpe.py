"""The ASCII fast path of tokenization gives exactly the tokenizer's own ids."""

from __future__ import annotations

import random
import string

import pytest
from transformers import AutoTokenizer

from services.router.ascii_bpe import AsciiByteLevelBPE
from tandem.model import default_model_dir


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return AutoTokenizer.from_pretrained(str(default_model_dir()), local_files_only=True)


@pytest.fixture(scope="module")
def fast(tokenizer: object) -> AsciiByteLevelBPE:
    path = AsciiByteLevelBPE.for_tokenizer(tokenizer.backend_tokenizer)  # type: ignore[attr-defined]
    assert path is not None, "SmolLM2's tokenizer is byte-level BPE: the fast path must apply"
    return path


TEXTS = [
    "",
    "Hello, world!",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|im_start|><|im_end|><|endoftext|>",
    "<|im_start|",  # half a special token is text
    "don't I'll we've they're she'd it's I'm 'S 'LL",
    "   leading and trailing spaces   ",
    "tabs\tand\n\nnew\r\nlines\x0b\x0cand\x1c\x1d\x1e\x1f separators",
    "numbers 1234567890 3.14159 1e-9 0x1F 2024-11-22",
    "code: def f(x):\n    return x**2  # square\n\n\nprint(f(3))",
    "punctuation!!! ??? ... --- ((( ))) {{}} [[]] <<>> @#$%^&*_+=|\\~`",
    "\x00\x01\x02 control \x7f",
    "a" * 300 + " " + "ab" * 150,
    "mixed <|im_end|>text<|im_start|> around specials",
    # Not ASCII: the tokenizer's own path.
    "café naïve 東京 emoji 😀 ½ ٣",
]


@pytest.mark.parametrize("text", TEXTS)
def test_same_ids_as_the_tokenizer(tokenizer: object, fast: AsciiByteLevelBPE, text: str) -> None:
    expected = tokenizer.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
    assert fast.encode(text) == expected
    assert fast.encode(text) == expected  # again, from the pre-token cache


def test_same_ids_on_random_ascii(tokenizer: object, fast: AsciiByteLevelBPE) -> None:
    generator = random.Random(5)
    alphabet = string.printable + "".join(map(chr, range(32))) + "'" * 10 + " " * 20
    for _ in range(300):
        text = "".join(generator.choice(alphabet) for _ in range(generator.randint(1, 200)))
        assert fast.encode(text) == tokenizer.encode(  # type: ignore[attr-defined]
            text, add_special_tokens=False), repr(text)


def test_the_cache_is_bounded(tokenizer: object) -> None:
    path = AsciiByteLevelBPE.for_tokenizer(
        tokenizer.backend_tokenizer, max_cached_words=10)  # type: ignore[attr-defined]
    assert path is not None
    text = " ".join(f"word{i}" for i in range(100))
    assert path.encode(text) == tokenizer.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
    assert len(path._words) == 10


def test_other_tokenizer_shapes_keep_their_own_path(tokenizer: object) -> None:
    from tokenizers import Tokenizer, normalizers

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # type: ignore[attr-defined]
    backend.normalizer = normalizers.NFC()
    assert AsciiByteLevelBPE.for_tokenizer(backend) is None
