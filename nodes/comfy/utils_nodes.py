"""ComfyUI's text utilities (utils/string), primitives and PreviewAny: plain Python on STRING,
INT and BOOLEAN values."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from engine.api import Bool, Choice, Int, NodeSpec, Out, Result, Text, node
from nodes.comfy import COMPAT
from nodes.runtime import Runtime

TRIM_MODES = ("Both", "Left", "Right")
COMPARE_MODES = ("Starts With", "Ends With", "Equal")
CASE_MODES = ("UPPERCASE", "lowercase", "Capitalize", "Title Case")
EXTRACT_MODES = ("First Match", "All Matches", "First Group", "All Groups")
MATCH_SEPARATOR = "\n"  # between the results of RegexExtract's "All" modes


@dataclass(frozen=True)
class LineText(Text):
    """A one-line STRING widget that says so (``"multiline": false``), as ComfyUI's newer nodes do."""

    def spec_options(self) -> dict[str, Any]:
        return {**super().spec_options(), "multiline": False}


def long_text() -> Text:
    return Text(multiline=True)


def regex_flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    return (re.IGNORECASE if case_insensitive else 0) | (re.MULTILINE if multiline else 0) | \
        (re.DOTALL if dotall else 0)


def compile_pattern(pattern: str, flags: int, node_id: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as error:
        raise ValueError(f"{node_id}: regex_pattern {pattern!r} is not a valid regular expression ({error}); "
                         "fix it (Python's re syntax)") from error


def extract(pattern: re.Pattern[str], string: str, mode: str, group_index: int) -> str:
    """RegexExtract's result: the first match, every match (each one's first group where the pattern has
    groups), the first match's group ``group_index``, or that group of every match; "" where there is none.
    "All" results are joined with newlines."""
    if mode == "First Match":
        found = pattern.search(string)
        return found.group(0) if found else ""
    if mode == "All Matches":
        matches = pattern.findall(string)
        return MATCH_SEPARATOR.join(m[0] if isinstance(m, tuple) else m for m in matches)
    if mode == "First Group":
        found = pattern.search(string)
        if found is None or pattern.groups < group_index:
            return ""
        return found.group(group_index) or ""
    if mode == "All Groups":
        if pattern.groups == 0 or pattern.groups < group_index:
            return ""
        return MATCH_SEPARATOR.join(m.group(group_index) or "" for m in pattern.finditer(string))
    raise ValueError(f"RegexExtract: mode {mode!r} is not one of {', '.join(EXTRACT_MODES)}")


def preview_text(source: Any) -> str:
    """How PreviewAny shows a value: text as it is, numbers and booleans written out, other values as
    JSON where they have a JSON form, else their ``str``."""
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, (bool, int, float)):
        return str(source)
    try:
        return json.dumps(source)
    except (TypeError, ValueError):
        return str(source)


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    @node("StringConcatenate", display_name="Concatenate", category="utils/string", compat=COMPAT)
    def string_concatenate(string_a: long_text(), string_b: long_text(),
                           delimiter: LineText(default="")) -> Out(STRING="STRING"):
        """string_a, delimiter, string_b."""
        return delimiter.join((string_a, string_b))

    @node("StringSubstring", display_name="Substring", category="utils/string", compat=COMPAT)
    def string_substring(string: long_text(), start: Int(), end: Int()) -> Out(STRING="STRING"):
        """The characters from start up to (not including) end; negative positions count from the end."""
        return string[start:end]

    @node("StringLength", display_name="Length", category="utils/string", compat=COMPAT)
    def string_length(string: long_text()) -> Out(length="INT"):
        """The number of characters."""
        return len(string)

    @node("StringReplace", display_name="Replace", category="utils/string", compat=COMPAT)
    def string_replace(string: long_text(), find: long_text(), replace: long_text()) -> Out(STRING="STRING"):
        """Every occurrence of find replaced by replace."""
        return string.replace(find, replace)

    @node("StringTrim", display_name="Trim", category="utils/string", compat=COMPAT)
    def string_trim(string: long_text(), mode: Choice(choices=TRIM_MODES)) -> Out(STRING="STRING"):
        """Whitespace removed from both ends, the left or the right."""
        return {"Both": string.strip, "Left": string.lstrip, "Right": string.rstrip}[mode]()

    @node("StringContains", display_name="Contains", category="utils/string", compat=COMPAT)
    def string_contains(string: long_text(), substring: long_text(),
                        case_sensitive: Bool(default=True)) -> Out(contains="BOOLEAN"):
        """Whether substring occurs in string."""
        if not case_sensitive:
            string, substring = string.lower(), substring.lower()
        return substring in string

    @node("StringCompare", display_name="Compare", category="utils/string", compat=COMPAT)
    def string_compare(string_a: long_text(), string_b: long_text(), mode: Choice(choices=COMPARE_MODES),
                       case_sensitive: Bool(default=True)) -> Out(BOOLEAN="BOOLEAN"):
        """Whether string_a starts with, ends with, or equals string_b."""
        if not case_sensitive:
            string_a, string_b = string_a.lower(), string_b.lower()
        if mode == "Starts With":
            return string_a.startswith(string_b)
        if mode == "Ends With":
            return string_a.endswith(string_b)
        return string_a == string_b

    @node("CaseConverter", display_name="Case Converter", category="utils/string", compat=COMPAT)
    def case_converter(string: long_text(), mode: Choice(choices=CASE_MODES)) -> Out(STRING="STRING"):
        """UPPERCASE, lowercase, Capitalize (first letter up, the rest down) or Title Case."""
        return {"UPPERCASE": string.upper, "lowercase": string.lower, "Capitalize": string.capitalize,
                "Title Case": string.title}[mode]()

    @node("RegexMatch", display_name="Regex Match", category="utils/string", compat=COMPAT)
    def regex_match(string: long_text(), regex_pattern: long_text(), case_insensitive: Bool(default=True),
                    multiline: Bool(default=False), dotall: Bool(default=False)) -> Out(matches="BOOLEAN"):
        """Whether the pattern matches anywhere in string. An invalid pattern is an error here (ComfyUI
        answers False, which hides the mistake)."""
        pattern = compile_pattern(regex_pattern, regex_flags(case_insensitive, multiline, dotall), "RegexMatch")
        return pattern.search(string) is not None

    @node("RegexExtract", display_name="Regex Extract", category="utils/string", compat=COMPAT)
    def regex_extract(
        string: long_text(), regex_pattern: long_text(), mode: Choice(choices=EXTRACT_MODES),
        case_insensitive: Bool(default=True), multiline: Bool(default=False), dotall: Bool(default=False),
        group_index: Int(default=1, min=0, max=100),
    ) -> Out(STRING="STRING"):
        """The first match, all matches, group group_index of the first match, or that group of all
        matches ("All" results one a line; "" where nothing matches). An invalid pattern is an error
        (ComfyUI answers "")."""
        pattern = compile_pattern(regex_pattern, regex_flags(case_insensitive, multiline, dotall), "RegexExtract")
        return extract(pattern, string, mode, group_index)

    @node("RegexReplace", display_name="Regex Replace", category="utils/string", compat=COMPAT)
    def regex_replace(
        string: long_text(), regex_pattern: long_text(), replace: long_text(),
        case_insensitive: Bool(default=True, optional=True) = True,
        multiline: Bool(default=False, optional=True) = False,
        dotall: Bool(default=False, optional=True) = False,
        count: Int(default=0, min=0, max=100, optional=True, tooltip="most replacements; 0 = all") = 0,
    ) -> Out(STRING="STRING"):
        """Matches of the pattern replaced by replace (\\1 or \\g<name> insert groups)."""
        pattern = compile_pattern(regex_pattern, regex_flags(case_insensitive, multiline, dotall), "RegexReplace")
        try:
            return pattern.sub(replace, string, count=count)
        except re.error as error:
            raise ValueError(f"RegexReplace: replace {replace!r} refers to a group the pattern lacks ({error}); "
                             "fix the \\N references") from error

    @node("PrimitiveBoolean", display_name="Boolean", category="utils/primitive", compat=COMPAT)
    def primitive_boolean(value: Bool()) -> Out(BOOLEAN="BOOLEAN"):
        """The value."""
        return value

    @node("PrimitiveStringMultiline", display_name="String (Multiline)", category="utils/primitive",
          compat=COMPAT)
    def primitive_string_multiline(value: long_text()) -> Out(STRING="STRING"):
        """The text."""
        return value

    @node("PreviewAny", display_name="Preview Any", category="utils", compat=COMPAT, output=True)
    def preview_any(source: "*") -> None:
        """Show any value as text in the editor."""
        return Result(values=(), ui={"text": [preview_text(source)]})

    return [string_concatenate, string_substring, string_length, string_replace, string_trim, string_contains,
            string_compare, case_converter, regex_match, regex_extract, regex_replace, primitive_boolean,
            primitive_string_multiline, preview_any]
