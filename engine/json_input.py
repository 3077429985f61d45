"""Reading JSON that comes from outside (request bodies, workflow files, PNG text chunks), with limits.

``json.loads`` alone accepts what later breaks a server: nesting deep enough to exhaust the
recursion limit (in the decoder or in any code that walks the value), integers of thousands
of digits (their conversion is quadratic; Python refuses past 4300), ``NaN`` and
``Infinity`` (not JSON: browsers' ``JSON.parse`` rejects the answer that echoes them), and
bytes in an unknown or wrong encoding. :func:`load_json` checks each before or while
parsing and raises :class:`JSONInputError` with a ``kind`` that names the limit.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from typing import Any, Literal

ErrorKind = Literal["invalid_json", "invalid_encoding", "json_too_deep", "number_out_of_range", "string_too_long"]


@dataclass(frozen=True)
class JSONLimits:
    max_depth: int = 64  # a workflow needs about 8; a UI graph in extra_pnginfo about 12
    max_int_digits: int = 40  # seeds are 64-bit (20 digits)
    max_string_chars: int = 4 << 20


class JSONInputError(ValueError):
    """Input that is not JSON we accept; ``kind`` says which rule it broke."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode_text(data: bytes, charset: str | None = None) -> str:
    """Bytes -> text: the declared charset, else UTF-8 (or UTF-16/32 recognised by JSON's rules)."""
    if charset:
        try:
            codecs.lookup(charset)
        except LookupError:
            raise JSONInputError("invalid_encoding", f"unknown charset {charset!r}; send UTF-8 JSON") from None
        encoding = charset
    else:
        encoding = json.detect_encoding(data)
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as error:
        raise JSONInputError("invalid_encoding", f"the body is not valid {encoding} text ({error.__class__.__name__} "
                                                 f"at byte {getattr(error, 'start', '?')}); send UTF-8 JSON") from None
    return text.removeprefix("\ufeff")


def nesting_depth(text: str, limit: int) -> int:
    """The deepest ``[``/``{`` nesting of ``text`` outside strings, counted up to ``limit + 1``."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def load_json(data: bytes | str, *, charset: str | None = None, limits: JSONLimits = JSONLimits()) -> Any:
    """Parse ``data`` under ``limits``; :class:`JSONInputError` says what is wrong."""
    text = decode_text(data, charset) if isinstance(data, (bytes, bytearray)) else data
    if nesting_depth(text, limits.max_depth) > limits.max_depth:
        raise JSONInputError("json_too_deep", f"JSON nested deeper than {limits.max_depth} levels; a workflow "
                                              "needs far fewer")

    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > limits.max_int_digits:
            raise JSONInputError("number_out_of_range",
                                 f"an integer of {len(digits.lstrip('-'))} digits; at most {limits.max_int_digits}")
        return int(digits)

    def parse_float(literal: str) -> float:
        value = float(literal)
        if value in (float("inf"), float("-inf")):
            raise JSONInputError("number_out_of_range", f"{literal[:40]} is beyond the range of a float")
        return value

    def parse_constant(name: str) -> Any:
        raise JSONInputError("number_out_of_range", f"{name} is not a JSON number; send a finite number")

    try:
        value = json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
    except JSONInputError:
        raise
    except json.JSONDecodeError as error:
        raise JSONInputError("invalid_json", f"not valid JSON: {error}") from None
    except RecursionError:  # the depth check makes this unreachable for plain containers
        raise JSONInputError("json_too_deep", "JSON nested too deeply") from None
    _check_strings(value, limits.max_string_chars)
    return value


def _check_strings(value: Any, limit: int) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if len(item) > limit:
                raise JSONInputError("string_too_long", f"a string of {len(item)} characters; at most {limit}")
        elif isinstance(item, dict):
            for key, child in item.items():
                if len(key) > limit:
                    raise JSONInputError("string_too_long", f"a key of {len(key)} characters; at most {limit}")
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
