"""ComfyUI's string utilities, primitives and PreviewAny (nodes.comfy.utils_nodes)."""

from __future__ import annotations

from typing import Any

import pytest


def test_string_basics(nodes: dict[str, Any]) -> None:
    assert nodes["StringConcatenate"](string_a="a cat", string_b="a hat", delimiter=", ") == "a cat, a hat"
    assert nodes["StringConcatenate"](string_a="x", string_b="y", delimiter="") == "xy"
    assert nodes["StringSubstring"](string="landscape", start=4, end=7) == "sca"
    assert nodes["StringSubstring"](string="landscape", start=-5, end=99) == "scape"
    assert nodes["StringLength"](string="héllo\n") == 6
    assert nodes["StringReplace"](string="red, red car", find="red", replace="blue") == "blue, blue car"
    assert nodes["StringTrim"](string="  x y \n", mode="Both") == "x y"
    assert nodes["StringTrim"](string="  x y \n", mode="Left") == "x y \n"
    assert nodes["StringTrim"](string="  x y \n", mode="Right") == "  x y"


def test_string_tests(nodes: dict[str, Any]) -> None:
    assert nodes["StringContains"](string="A Red Car", substring="red", case_sensitive=False) is True
    assert nodes["StringContains"](string="A Red Car", substring="red", case_sensitive=True) is False
    compare = nodes["StringCompare"]
    assert compare(string_a="Portrait of", string_b="portrait", mode="Starts With", case_sensitive=False) is True
    assert compare(string_a="Portrait of", string_b="portrait", mode="Starts With", case_sensitive=True) is False
    assert compare(string_a="photo.png", string_b=".png", mode="Ends With", case_sensitive=True) is True
    assert compare(string_a="Same", string_b="same", mode="Equal", case_sensitive=False) is True
    assert compare(string_a="Same", string_b="same", mode="Equal", case_sensitive=True) is False


@pytest.mark.parametrize(("mode", "expected"), [("UPPERCASE", "A CAT'S HAT"), ("lowercase", "a cat's hat"),
                                                ("Capitalize", "A cat's hat"), ("Title Case", "A Cat'S Hat")])
def test_case_converter(nodes: dict[str, Any], mode: str, expected: str) -> None:
    assert nodes["CaseConverter"](string="a CAT's hat", mode=mode) == expected


def test_regex_match_and_flags(nodes: dict[str, Any]) -> None:
    match = nodes["RegexMatch"]
    assert match(string="Seed: 42", regex_pattern=r"seed: \d+", case_insensitive=True, multiline=False,
                 dotall=False) is True
    assert match(string="Seed: 42", regex_pattern=r"seed: \d+", case_insensitive=False, multiline=False,
                 dotall=False) is False
    assert match(string="a\nb", regex_pattern="^b$", case_insensitive=True, multiline=True, dotall=False) is True
    assert match(string="a\nb", regex_pattern="^b$", case_insensitive=True, multiline=False, dotall=False) is False
    assert match(string="a\nb", regex_pattern="a.b", case_insensitive=True, multiline=False, dotall=True) is True
    with pytest.raises(ValueError, match=r"RegexMatch: regex_pattern '\(' is not a valid regular expression"):
        match(string="x", regex_pattern="(", case_insensitive=True, multiline=False, dotall=False)


@pytest.mark.parametrize(("mode", "group_index", "expected"), [
    ("First Match", 1, "W=512"), ("All Matches", 1, "512\n768"), ("First Group", 1, "512"),
    ("First Group", 0, "W=512"), ("All Groups", 1, "512\n768"), ("All Groups", 2, ""), ("First Group", 3, "")])
def test_regex_extract_modes(nodes: dict[str, Any], mode: str, group_index: int, expected: str) -> None:
    out = nodes["RegexExtract"](string="W=512, h=768", regex_pattern=r"[wh]=(\d+)", mode=mode, case_insensitive=True,
                                multiline=False, dotall=False, group_index=group_index)
    assert out == expected


def test_regex_extract_without_groups_and_bad_patterns(nodes: dict[str, Any]) -> None:
    common = dict(case_insensitive=False, multiline=False, dotall=False, group_index=1)
    assert nodes["RegexExtract"](string="a1 b22", regex_pattern=r"\d+", mode="All Matches", **common) == "1\n22"
    assert nodes["RegexExtract"](string="a1 b22", regex_pattern=r"\d+", mode="All Groups", **common) == ""
    assert nodes["RegexExtract"](string="abc", regex_pattern=r"\d", mode="First Match", **common) == ""
    with pytest.raises(ValueError, match=r"RegexExtract: regex_pattern '\(' is not a valid regular expression"):
        nodes["RegexExtract"](string="abc", regex_pattern="(", mode="First Match", **common)


def test_regex_replace(nodes: dict[str, Any]) -> None:
    replace = nodes["RegexReplace"]
    assert replace(string="Cat cat CAT", regex_pattern="cat", replace="dog") == "dog dog dog"  # optional defaults
    assert replace(string="Cat cat CAT", regex_pattern="cat", replace="dog", case_insensitive=False) == \
        "Cat dog CAT"
    assert replace(string="a1 b2 c3", regex_pattern=r"(\w)(\d)", replace=r"\2\1", count=2) == "1a 2b c3"
    with pytest.raises(ValueError, match=r"RegexReplace: replace '\\\\3' refers to a group the pattern lacks"):
        replace(string="a1", regex_pattern=r"(\w)(\d)", replace=r"\3")


def test_primitives_and_preview_any(nodes: dict[str, Any]) -> None:
    assert nodes["PrimitiveBoolean"](value=True) is True
    assert nodes["PrimitiveStringMultiline"](value="line 1\nline 2") == "line 1\nline 2"
    preview = nodes["PreviewAny"]
    assert preview(source="text").ui == {"text": ["text"]}
    assert preview(source=3.5).ui["text"] == ["3.5"] and preview(source=False).ui["text"] == ["False"]
    assert preview(source={"a": [1, 2]}).ui["text"] == ['{"a": [1, 2]}']
    assert preview(source=None).ui["text"] == ["None"]
    assert preview(source=object).ui["text"] == [str(object)]  # no JSON form: its str
