"""CLIP byte-level BPE tokenizer (OpenAI CLIP / OpenCLIP vocabulary, 49,408 tokens).

Our own implementation, exact against the reference that the rest of the ecosystem
uses today: transformers' ``CLIPTokenizer`` (backed by the ``tokenizers`` library).
Its text clean-up, which we reproduce, is:

1. Unicode NFC normalisation;
2. every run of Unicode white space (the ``White_Space`` property) becomes one space;
3. lower-casing character by character (no context-dependent rules such as the Greek
   final sigma).

There is deliberately no ``ftfy`` repair and no HTML unescaping (OpenAI's original
``clip`` package does both; transformers' fast tokenizer, which diffusers and most
tools use, does neither, so ``&amp;`` stays three tokens: ``&``, ``amp``, ``;``).
The special tokens ``<|startoftext|>`` and ``<|endoftext|>`` written literally in a
prompt map to their ids, as the reference does.

Pre-tokenization splits the cleaned text into the pieces of OpenAI's pattern
``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+``
(implemented with ``unicodedata`` so no third-party regex engine is needed), maps each
piece's UTF-8 bytes to printable characters (GPT-2's byte table), marks the end of the
word with ``</w>`` and applies the merges lowest rank first.

The merges come from (first found wins): an explicit path, a ``tokenizer/`` folder
beside the model (diffusers layout: ``vocab.json`` + ``merges.txt``, or
``tokenizer.json``), or a data file of an installed distribution
(``open-clip-torch``, ``clip-anytorch``, ``openai-clip``), read through
``importlib.metadata`` without importing the package. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TypeVar

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
WINDOW = 77  # tokens per text-encoder window: start + 75 + end
CHUNK = WINDOW - 2  # prompt tokens per window
MAX_WORD_TOKENS = 8  # words up to this long are never split across windows (ComfyUI)
T = TypeVar("T")

# Distributions known to ship the merges as a data file, with the file's path inside them.
MERGES_DISTRIBUTIONS: tuple[tuple[str, str], ...] = (
    ("open-clip-torch", f"open_clip/{BPE_FILE_NAME}"),
    ("clip-anytorch", f"clip/{BPE_FILE_NAME}"),
    ("openai-clip", f"clip/{BPE_FILE_NAME}"),
)

# The Unicode White_Space property (what the reference's `\s` matches). Python's
# str.isspace() also accepts U+001C..U+001F, which the reference keeps as symbols.
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_SPECIAL = (START_TOKEN, END_TOKEN)
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in _SPECIAL) + ")")


class MergesNotFoundError(FileNotFoundError):
    """The CLIP BPE merges were not found anywhere we looked."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 onwards,
    so BPE never sees white space or control characters. The dict's order is the
    vocabulary order of the first 256 tokens.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TABLE = bytes_to_unicode()


def clean_text(text: str) -> str:
    """The reference's normalizer: NFC, white space runs -> one space, per-char lower."""
    text = unicodedata.normalize("NFC", text)
    out: list[str] = []
    in_space = False
    for char in text:
        if char in _WHITE_SPACE:
            if not in_space:
                out.append(" ")
            in_space = True
            continue
        in_space = False
        out.append(char.lower())
    return "".join(out)


def _is_letter(char: str) -> bool:
    return unicodedata.category(char)[0] == "L"


def _is_number(char: str) -> bool:
    return unicodedata.category(char)[0] == "N"


def pre_tokenize(text: str) -> list[str]:
    """Split cleaned text into the pieces of OpenAI's CLIP pattern (leftmost alternative wins)."""
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        special = next((s for s in _SPECIAL if text.startswith(s, i)), None)
        contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
        if special is not None:
            # The reference then re-splits each piece with GPT-2's byte-level pattern,
            # which only changes this one: "<|endoftext|>" -> "<|", "endoftext", "|>".
            pieces.extend(("<|", special[2:-2], "|>"))
            i += len(special)
        elif contraction is not None:
            pieces.append(contraction)
            i += len(contraction)
        elif _is_letter(char):
            j = i + 1
            while j < n and _is_letter(text[j]):
                j += 1
            pieces.append(text[i:j])
            i = j
        elif _is_number(char):
            pieces.append(char)  # numbers are split digit by digit
            i += 1
        elif char in _WHITE_SPACE:
            i += 1
        else:
            j = i + 1
            while j < n and not (
                text[j] in _WHITE_SPACE or _is_letter(text[j]) or _is_number(text[j])
            ):
                j += 1
            pieces.append(text[i:j])
            i = j
    return pieces


class ClipTokenizer:
    """Byte-level BPE over CLIP's vocabulary; ``encode`` returns ids without start/end."""

    def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]]) -> None:
        missing = [t for t in _SPECIAL if t not in vocab]
        if missing:
            raise ValueError(
                f"CLIP vocabulary lacks the special token(s) {missing}; expected a vocabulary "
                f"built from {BPE_FILE_NAME} or a CLIP tokenizer folder's vocab.json."
            )
        self.vocab: dict[str, int] = dict(vocab)
        self.ranks: dict[tuple[str, str], int] = {pair: r for r, pair in enumerate(merges)}
        self.bos_id: int = self.vocab[START_TOKEN]
        self.eos_id: int = self.vocab[END_TOKEN]
        self._id_to_token = {i: t for t, i in self.vocab.items()}
        # Memo of word -> BPE ids: prompts repeat words constantly; bounded below.
        self._memo: dict[str, tuple[int, ...]] = {}

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_bpe_file(cls, path: Path) -> "ClipTokenizer":
        """Build from OpenAI's ``bpe_simple_vocab_16e6.txt(.gz)`` as CLIP itself does."""
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        # Line 0 is a version header; CLIP uses the first 49152 - 256 - 2 merges.
        merge_lines = lines[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(line.split()) for line in merge_lines]
        if len(merges) != VOCAB_SIZE - 512 - 2 or any(len(m) != 2 for m in merges):
            raise ValueError(
                f"{path} does not look like CLIP's merges file: expected "
                f"{VOCAB_SIZE - 514} merge lines of two symbols after the header."
            )
        byte_chars = list(_BYTE_TABLE.values())
        tokens = byte_chars + [c + "</w>" for c in byte_chars]
        tokens += ["".join(m) for m in merges] + [START_TOKEN, END_TOKEN]
        return cls({t: i for i, t in enumerate(tokens)}, merges)  # type: ignore[arg-type]

    @classmethod
    def from_folder(cls, folder: Path) -> "ClipTokenizer":
        """Build from a diffusers/transformers tokenizer folder."""
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
            merges = [tuple(l.split()) for l in lines if l and not l.startswith("#version")]
            return cls(vocab, merges)  # type: ignore[arg-type]
        if (folder / "tokenizer.json").is_file():
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
            return cls(model["vocab"], merges)  # type: ignore[arg-type]
        raise MergesNotFoundError(
            f"{folder} has neither vocab.json + merges.txt nor tokenizer.json."
        )

    # -- encoding -----------------------------------------------------------------------

    def _bpe(self, piece: str) -> tuple[int, ...]:
        cached = self._memo.get(piece)
        if cached is not None:
            return cached
        chars = [_BYTE_TABLE[b] for b in piece.encode("utf-8")]
        word = chars[:-1] + [chars[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[k], word[k + 1]) for k in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, 1 << 30))
            if best not in self.ranks:
                break
            merged: list[str] = []
            k = 0
            while k < len(word):
                if k < len(word) - 1 and (word[k], word[k + 1]) == best:
                    merged.append(word[k] + word[k + 1])
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        ids: tuple[int, ...] = tuple(self.vocab[s] for s in word)
        if len(self._memo) < 100_000:
            self._memo[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens, unbounded length."""
        ids: list[int] = []
        # Like the reference, special tokens are recognised in the raw text only; one that
        # appears after lower-casing (``<|ENDOFTEXT|>``) is BPE-encoded as ordinary text.
        for k, segment in enumerate(_SPECIAL_SPLIT.split(text)):
            if k % 2:
                ids.append(self.vocab[segment])
                continue
            for piece in pre_tokenize(clean_text(segment)):
                ids.extend(self._bpe(piece))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids, words separated by spaces, special tokens dropped (for display)."""
        byte_of = {c: b for b, c in _BYTE_TABLE.items()}
        text = "".join(self._id_to_token[i] for i in ids if i not in (self.bos_id, self.eos_id))
        words = [bytes(byte_of[c] for c in w) for w in text.split("</w>") if w]
        return " ".join(w.decode("utf-8", errors="replace") for w in words)

    def window(self, ids: Sequence[int], *, pad_id: int, length: int = WINDOW) -> list[int]:
        """``[start] ids [end] pad...`` of exactly ``length`` tokens; ids must fit."""
        if len(ids) > length - 2:
            raise ValueError(
                f"{len(ids)} tokens do not fit one {length}-token window (at most "
                f"{length - 2}); split long prompts with chunk_words() or chunk_ids() first."
            )
        body = [self.bos_id, *ids, self.eos_id]
        return body + [pad_id] * (length - len(body))


def split_words(text: str) -> list[str]:
    """Split at Unicode white space (the reference's definition, not ``str.split``'s).

    Pre-tokenization never joins across white space, so the words' ids concatenated equal
    ``encode(text)``.
    """
    words: list[str] = []
    start = None
    for i, char in enumerate(text):
        if char in _WHITE_SPACE:
            if start is not None:
                words.append(text[start:i])
                start = None
        elif start is None:
            start = i
    if start is not None:
        words.append(text[start:])
    return words


def chunk_words(
    words: Sequence[Sequence[T]], size: int = CHUNK, max_word: int = MAX_WORD_TOKENS
) -> list[list[T]]:
    """Pack words' tokens into chunks of at most ``size``, keeping short words whole.

    ComfyUI's rule: a word of at most ``max_word`` tokens that does not fit in the current
    chunk starts the next one (the current window then ends early and is padded); longer
    words are split at the boundary. Always at least one (possibly empty) chunk.
    """
    chunks: list[list[T]] = [[]]
    for word in words:
        rest = list(word)
        if chunks[-1] and len(chunks[-1]) + len(rest) > size and len(rest) <= max_word:
            chunks.append([])
        while len(chunks[-1]) + len(rest) > size:
            room = size - len(chunks[-1])
            chunks[-1].extend(rest[:room])
            rest = rest[room:]
            chunks.append([])
        chunks[-1].extend(rest)
    return chunks


def chunk_ids(ids: Sequence[int], size: int = CHUNK) -> list[list[int]]:
    """Split ids into chunks of ``size`` (one empty chunk for an empty prompt)."""
    if not ids:
        return [[]]
    return [list(ids[k : k + size]) for k in range(0, len(ids), size)]


def _distribution_merges() -> tuple[list[Path], list[str]]:
    """Merges files shipped by installed distributions, and what we checked."""
    found: list[Path] = []
    checked: list[str] = []
    for dist_name, rel in MERGES_DISTRIBUTIONS:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            checked.append(f"distribution {dist_name!r}: not installed")
            continue
        for file in dist.files or ():
            if str(file).replace("\\", "/").endswith(rel):
                path = Path(str(dist.locate_file(file)))
                if path.is_file():
                    found.append(path)
        checked.append(f"distribution {dist_name!r}: {rel} " + ("found" if found else "missing"))
    return found, checked


def find_clip_merges(
    explicit: Path | None = None, *, model_path: Path | None = None
) -> Path:
    """The first merges source found: explicit path, tokenizer folder, installed wheel.

    Returns a merges file (``.txt``/``.txt.gz``) or a tokenizer folder.
    Raises MergesNotFoundError listing every place checked and how to fix it.
    """
    looked: list[str] = []
    if explicit is not None:
        if explicit.is_file() or (explicit.is_dir() and _is_tokenizer_folder(explicit)):
            return explicit
        looked.append(f"explicit path {explicit}: missing")
    if model_path is not None:
        base = model_path if model_path.is_dir() else model_path.parent
        for folder in (base / "tokenizer", base / "tokenizer_2", base):
            if _is_tokenizer_folder(folder):
                return folder
            looked.append(f"tokenizer folder {folder}: no vocab.json + merges.txt")
        # Beside the model, or in a shared models/tokenizers/ next to models/checkpoints/.
        for candidate in (base / BPE_FILE_NAME, base.parent / "tokenizers" / BPE_FILE_NAME):
            if candidate.is_file():
                return candidate
            looked.append(f"{candidate}: missing")
    found, checked = _distribution_merges()
    if found:
        return found[0]
    looked.extend(checked)
    raise MergesNotFoundError(
        "The CLIP tokenizer merges (" + BPE_FILE_NAME + ") were not found. Looked at:\n  - "
        + "\n  - ".join(looked)
        + "\nFix it with one of: `pip install open-clip-torch` (ships the file; it is read, "
        f"not imported); put {BPE_FILE_NAME} into models/tokenizers/ (beside models/checkpoints/) "
        "or next to the model file; put a diffusers `tokenizer/` folder (vocab.json + merges.txt) "
        "next to the model file; or pass the file's path explicitly. "
        "Nothing is downloaded at run time."
    )


def _is_tokenizer_folder(folder: Path) -> bool:
    return folder.is_dir() and (
        ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())
        or (folder / "tokenizer.json").is_file()
    )


@functools.lru_cache(maxsize=8)
def _load_cached(source: Path) -> ClipTokenizer:
    return ClipTokenizer.from_folder(source) if source.is_dir() else ClipTokenizer.from_bpe_file(source)


def load_clip_tokenizer(
    explicit: Path | None = None, *, model_path: Path | None = None
) -> ClipTokenizer:
    """Find the merges (see find_clip_merges) and build the tokenizer (cached per source).

    The cached tokenizer is shared; it is never mutated apart from its word memo.
    """
    return _load_cached(find_clip_merges(explicit, model_path=model_path).resolve())
