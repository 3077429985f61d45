"""Prompt weighting syntax and textual-inversion files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgm.text.prompt_weighting import (
    PromptPart,
    embedding_for_width,
    find_embedding,
    load_embedding,
    parse_prompt,
    parse_weights,
)


def weights(prompt: str) -> list[tuple[str, float]]:
    return [(text, round(weight, 6)) for text, weight in parse_weights(prompt)]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red car", [("a red car", 1.0)]),
        ("a (red) car", [("a ", 1.0), ("red", 1.1), (" car", 1.0)]),
        ("a [red] car", [("a ", 1.0), ("red", round(1 / 1.1, 6)), (" car", 1.0)]),
        ("(red:1.3)", [("red", 1.3)]),
        ("(red: 0.5 )", [("red", 0.5)]),
        ("(red:-1)", [("red", -1.0)]),
        ("(red:.25)", [("red", 0.25)]),
        ("((red))", [("red", 1.21)]),
        ("((red:1.5))", [("red", 1.65)]),
        ("((red):1.5)", [("red", 1.65)]),
        ("[[red]]", [("red", round(1 / 1.21, 6))]),
        ("(a [b] c)", [("a ", 1.1), ("b", 1.0), (" c", 1.1)]),
        ("(a (b:2) c:0.5)", [("a ", 0.5), ("b", 1.0), (" c", 0.5)]),
        (r"\(not weighted\)", [("(not weighted)", 1.0)]),
        (r"(a \) b)", [("a ) b", 1.1)]),
        (r"back\\slash", [("back\\slash", 1.0)]),
        ("(time: noon)", [("time: noon", 1.1)]),  # not a number: literal colon, default weight
        ("a (b", [("a (b", 1.0)]),  # unmatched opener is literal
        ("a ) b ]", [("a ) b ]", 1.0)]),  # unmatched closers are literal
        ("(a]", [("(a]", 1.0)]),  # mismatched pair is literal
        ("(a (b:1.2) c", [("(a ", 1.0), ("b", 1.2), (" c", 1.0)]),
        ("", []),
    ],
)
def test_parse_weights(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert weights(prompt) == expected


def test_embedding_references_are_split_out() -> None:
    parts = parse_prompt("a photo, embedding:my-style.v2, (embedding:bad_hands:1.2).")
    assert parts == [
        PromptPart("a photo, ", 1.0),
        PromptPart("", 1.0, embedding="my-style.v2"),
        PromptPart(", ", 1.0),
        PromptPart("", 1.2, embedding="bad_hands"),
        PromptPart(".", 1.0),
    ]


def test_input_is_not_mutated_and_parsing_is_pure() -> None:
    prompt = "((a)) [b]"
    assert parse_weights(prompt) == parse_weights(prompt) and prompt == "((a)) [b]"


def test_load_embedding_layouts(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    vectors = torch.randn(3, 768)
    torch.save({"string_to_param": {"*": vectors}, "name": "a1111", "step": 100}, tmp_path / "a1111.pt")
    save_file({"emb_params": vectors}, str(tmp_path / "a1111.safetensors"))
    torch.save({"<my-token>": vectors[0]}, tmp_path / "learned_embeds.bin")
    save_file({"clip_l": vectors, "clip_g": torch.randn(3, 1280)}, str(tmp_path / "sdxl.safetensors"))
    assert torch.equal(load_embedding(tmp_path / "a1111.pt")["*"], vectors)
    assert torch.equal(load_embedding(tmp_path / "a1111.safetensors")["*"], vectors)
    assert load_embedding(tmp_path / "learned_embeds.bin")["*"].shape == (1, 768)
    sdxl = load_embedding(tmp_path / "sdxl.safetensors")
    assert embedding_for_width(sdxl, 1280, "sdxl").shape == (3, 1280)
    assert torch.equal(embedding_for_width(sdxl, 768, "sdxl"), vectors)
    with pytest.raises(ValueError, match="1024"):
        embedding_for_width(sdxl, 1024, "sdxl")


def test_pickles_with_code_are_refused(tmp_path: Path) -> None:
    torch.save({"string_to_param": {"*": torch.zeros(1, 4)}, "obj": Path("x")}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="safetensors"):
        load_embedding(tmp_path / "evil.pt")


def test_find_embedding_stays_in_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    folder.mkdir()
    (folder / "style.safetensors").write_bytes(b"")
    (tmp_path / "secret.pt").write_bytes(b"")
    assert find_embedding("style", folder) == (folder / "style.safetensors").resolve()
    assert find_embedding("style.safetensors", folder) == (folder / "style.safetensors").resolve()
    with pytest.raises(ValueError, match="outside"):
        find_embedding("../secret", folder)
    with pytest.raises(FileNotFoundError, match=r"available: \['style'\]"):
        find_embedding("nothere", folder)
