"""Our CLIP tokenizer against transformers' CLIPTokenizer built from the same merges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgm.text.tokenizer import (
    BPE_FILE_NAME,
    CHUNK,
    VOCAB_SIZE,
    ClipTokenizer,
    MergesNotFoundError,
    chunk_ids,
    chunk_words,
    clean_text,
    find_clip_merges,
    load_clip_tokenizer,
    split_words,
)

MERGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "clip" / BPE_FILE_NAME

pytestmark = pytest.mark.skipif(
    not MERGES.is_file(),
    reason=f"CLIP merges test data missing: expected {MERGES} (see ../shared/data/README.md)",
)

HARD_PROMPTS = [
    "",
    "   ",
    "a photo of an astronaut riding a horse on mars",
    "A PHOTO OF AN ASTRONAUT, Riding A Horse!!!",
    "masterpiece, best quality, (highly detailed:1.2), [blurry], 8k uhd, dslr",
    "café crème brûlée, naïve façade, São Paulo, Zürich, Ærøskøbing, Øresund",
    "e\u0301 composed vs \u00e9 precomposed (NFC)",
    "ΟΔΟΣ ΣΟΦΙΑΣ and Ελληνικά; русский текст; 日本語のテキスト; 中文提示词; 한국어",
    "İstanbul, ß straße, ﬁ ligature, Ⅻ roman twelve, ½ half, ² squared, ٣ arabic digit",
    "emoji 🐱🐶🚀 👩‍👩‍👧 ❤️ flags 🇯🇵 skin 👍🏽",
    "numbers 1234567890 3.14159 -42 1e-5 #1 100% $9.99 2024-01-01 12:30",
    "punctuation !@#$%^&*()_+-=[]{}|;':\",./<>? `~ ... --- ***",
    "don't can't it's we're they've I'm we'll he'd 'S 'LL ''quoted''",
    "html entities &amp; &lt;b&gt; &quot;q&quot; &#39; &nbsp; &copy;",
    "tabs\tnew\nlines\r\nand\u00a0nbsp\u2003em\u3000ideographic   spaces",
    "control \x1c\x1f chars, zero\u200bwidth, soft\u00adhyphen, bom\ufeff",
    "special <|startoftext|> tokens <|endoftext|> inline and <|ENDOFTEXT|> upper",
    "embedding:my_style, (embedding:other:1.2), under_scores and hyphen-ated words",
    "https://example.com/path?query=1&x=y user@example.com C:\\path\\file.png",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "a " * 100 + "very long prompt that runs past seventy-five tokens, " * 12,
    "mixed😀letters123and___symbols🙂",
]


@pytest.fixture(scope="module")
def ours() -> ClipTokenizer:
    return ClipTokenizer.from_bpe_file(MERGES)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory: pytest.TempPathFactory, ours: ClipTokenizer) -> Path:
    """vocab.json + merges.txt written the way OpenAI's CLIP builds its vocabulary."""
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "vocab.json").write_text(json.dumps(ours.vocab), encoding="utf-8")
    merges = sorted(ours.ranks, key=ours.ranks.__getitem__)
    lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def reference(tokenizer_folder: Path):  # transformers.CLIPTokenizer
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPTokenizer.from_pretrained(str(tokenizer_folder))


def test_vocabulary_is_openai_layout(ours: ClipTokenizer) -> None:
    assert len(ours.vocab) == VOCAB_SIZE
    assert (ours.bos_id, ours.eos_id) == (49406, 49407)
    assert ours.vocab["!"] == 0 and ours.vocab["!</w>"] == 256


@pytest.mark.parametrize("prompt", HARD_PROMPTS, ids=range(len(HARD_PROMPTS)))
def test_matches_transformers_on_hard_prompts(ours: ClipTokenizer, reference, prompt: str) -> None:
    expected = reference(prompt)["input_ids"]
    assert [ours.bos_id, *ours.encode(prompt), ours.eos_id] == expected


def test_matches_transformers_on_every_single_byte_and_random_text(ours: ClipTokenizer, reference) -> None:
    import random

    rng = random.Random(0)
    alphabet = [chr(c) for c in range(32, 0x250)] + list("🐱é日本語Σς ")
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(200)]
    texts += [chr(c) for c in range(1, 0x300)]
    expected = reference(texts)["input_ids"]
    got = [[ours.bos_id, *ours.encode(t), ours.eos_id] for t in texts]
    mismatches = [(t, g, e) for t, g, e in zip(texts, got, expected) if g != e]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[0]}"


def test_clean_up_is_documented_behaviour() -> None:
    # No HTML unescape, no ftfy; white space collapsed, per-char lower case (final sigma kept as σ).
    assert clean_text("A&amp;B\t\n  C ΟΔΟΣ") == "a&amp;b c οδοσ"


def test_window_and_chunks(ours: ClipTokenizer) -> None:
    ids = ours.encode("a red car")
    window = ours.window(ids, pad_id=0)
    assert len(window) == 77 and window[:5] == [ours.bos_id, *ids, ours.eos_id]
    assert set(window[5:]) == {0}
    long_ids = list(range(200))
    chunks = chunk_ids(long_ids)
    assert [len(c) for c in chunks] == [CHUNK, CHUNK, 200 - 2 * CHUNK]
    assert sum(chunks, []) == long_ids
    assert chunk_ids([]) == [[]]
    with pytest.raises(ValueError, match="chunk_ids"):
        ours.window(long_ids, pad_id=0)


def test_decode_round_trips_words(ours: ClipTokenizer) -> None:
    assert ours.decode(ours.encode("Café, 🐱 ok")) == "café , 🐱 ok"


def test_finds_tokenizer_folder_beside_model(tmp_path: Path, tokenizer_folder: Path, ours: ClipTokenizer) -> None:
    model_dir = tmp_path / "pipeline"
    (model_dir / "tokenizer").mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        (model_dir / "tokenizer" / name).write_bytes((tokenizer_folder / name).read_bytes())
    found = find_clip_merges(model_path=model_dir / "model.safetensors")
    assert found == model_dir / "tokenizer"
    from_folder = load_clip_tokenizer(model_path=model_dir / "model.safetensors")
    prompt = HARD_PROMPTS[9]
    assert from_folder.encode(prompt) == ours.encode(prompt)


def test_finds_merges_in_installed_distribution_without_importing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake installed wheel: dist-info with a RECORD that lists the data file.
    site = tmp_path / "site"
    (site / "open_clip").mkdir(parents=True)
    (site / "open_clip" / BPE_FILE_NAME).write_bytes(MERGES.read_bytes())
    # The package would fail if imported: we must only read its data file.
    (site / "open_clip" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    info = site / "open_clip_torch-9.9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: open_clip_torch\nVersion: 9.9.9\n")
    (info / "RECORD").write_text(f"open_clip/__init__.py,,\nopen_clip/{BPE_FILE_NAME},,\n")
    monkeypatch.syspath_prepend(str(site))
    found = find_clip_merges(model_path=tmp_path / "nowhere" / "model.safetensors")
    assert found == site / "open_clip" / BPE_FILE_NAME


def test_missing_merges_error_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sgm.text.tokenizer.MERGES_DISTRIBUTIONS", (("surely-not-installed-xyz", "x/y.gz"),))
    with pytest.raises(MergesNotFoundError) as info:
        find_clip_merges(tmp_path / "missing.txt.gz", model_path=tmp_path / "m.safetensors")
    message = str(info.value)
    assert str(tmp_path / "missing.txt.gz") in message
    assert str(tmp_path / "tokenizer") in message
    assert "surely-not-installed-xyz" in message
    assert "pip install open-clip-torch" in message and f"put {BPE_FILE_NAME} into models/tokenizers/" in message


def test_finds_merges_in_models_tokenizers_folder(tmp_path: Path) -> None:
    (tmp_path / "models" / "tokenizers").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints").mkdir()
    target = tmp_path / "models" / "tokenizers" / BPE_FILE_NAME
    target.write_bytes(MERGES.read_bytes())
    assert find_clip_merges(model_path=tmp_path / "models" / "checkpoints" / "x.safetensors") == target


@pytest.mark.parametrize("prompt", HARD_PROMPTS, ids=range(len(HARD_PROMPTS)))
def test_word_by_word_encoding_equals_whole_text(ours: ClipTokenizer, prompt: str) -> None:
    assert sum((ours.encode(w) for w in split_words(prompt)), []) == ours.encode(prompt)


def test_split_words_uses_unicode_white_space_only() -> None:
    assert split_words(" a\tb\u3000c\x1cd  ") == ["a", "b", "c\x1cd"]  # \x1c is a symbol to CLIP


def test_chunk_words_keeps_short_words_whole() -> None:
    words = [[f"w{i}.{j}" for j in range(3)] for i in range(30)]  # 30 words x 3 tokens
    chunks = chunk_words(words, size=10, max_word=8)
    assert [len(c) for c in chunks] == [9] * 10  # 3 words per chunk, one pad slot left
    assert sum(chunks, []) == sum(words, [])
    long_word = [f"x{j}" for j in range(12)]  # longer than max_word: split at the boundary
    chunks = chunk_words([["a"] * 6, long_word, ["b"]], size=10, max_word=8)
    assert chunks == [["a"] * 6 + long_word[:4], long_word[4:] + ["b"]]
    assert chunk_words([], size=10) == [[]]
    assert chunk_words([["a"] * 10, ["b"]], size=10) == [["a"] * 10, ["b"]]
