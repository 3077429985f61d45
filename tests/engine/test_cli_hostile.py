"""``main.py run`` / ``validate`` on bad files: a message and exit status 1 or 2, never a traceback."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

import main


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x00")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(chunk(k, b) for k, b in chunks)
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


CASES: dict[str, bytes | None] = {
    "array.json": b"[1, 2, 3]",
    "string.json": b'"a workflow"',
    "number.json": b"42",
    "null.json": b"null",
    "empty.json": b"",
    "deep.json": b"[" * 2000 + b"]" * 2000,
    "deep-object.json": b'{"version": 1, "nodes": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
    "nan.json": b'{"version": 1, "nodes": {"1": {"type": "EmptyLatent", "inputs": {"width": NaN}}}}',
    "bigint.json": b'{"version": 1, "nodes": {"1": {"type": "EmptyLatent", "inputs": {"width": ' + b"9" * 5000 + b"}}}}",
    "garbage.json": bytes(range(256)) * 4,
    "utf16.json": '{"version": 1, "nodes": {}}'.encode("utf-16"),
    "nodes-list.json": b'{"version": 1, "nodes": [1, 2]}',
    "nodes-string.json": b'{"version": 1, "nodes": {"1": "KSampler"}}',
    "ui-garbage.json": b'{"nodes": [{"id": "x", "type": 5}], "links": "none", "version": 0.4}',
    "ui-links.json": b'{"nodes": [{"id": 1, "type": "EmptyLatentImage", "widgets_values": [64]}], '
                     b'"links": [[1, 2, 3]], "version": 0.4}',
    "truncated.png": _png([])[:30],
    "no-text.png": _png([]),
    "bad-chunk.png": _png([(b"tEXt", b"prompt\x00{not json")]),
    "bomb.png": _png([(b"zTXt", b"workflow\x00\x00" + zlib.compress(b" " * (40 << 20), 9))]),
    "deep-chunk.png": _png([(b"tEXt", b"prompt\x00" + b"[" * 5000 + b"]" * 5000)]),
    "folder": None,
}


def _main(args: list[str]) -> tuple[int, str]:
    """``main.main`` as the shell sees it: ``SystemExit("message")`` prints it and exits 1."""
    try:
        return main.main(args), ""
    except SystemExit as exit:
        if isinstance(exit.code, str):
            return 1, exit.code
        return int(exit.code or 0), ""


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_workflow_files_get_a_message_not_a_traceback(tmp_path: Path, capsys, name: str, command: str) -> None:
    path = tmp_path / name
    if CASES[name] is None:
        path.mkdir()
    else:
        path.write_bytes(CASES[name])
    args = [command, str(path)] + (["--output-dir", str(tmp_path / "out")] if command == "run" else [])
    code, message = _main(args)
    captured = capsys.readouterr()
    text = captured.out + captured.err + message
    assert code in (1, 2), (code, text[-500:])
    assert "Traceback" not in text, text[-2000:]
    assert text.strip(), "a refusal must say why"
    assert len(text) < 20_000, "the message names the problem; it does not dump the document"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_bomb_is_refused_without_inflating_it(tmp_path: Path, capsys) -> None:
    import resource

    path = tmp_path / "bomb.png"
    path.write_bytes(CASES["bomb.png"])  # type: ignore[arg-type]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, message = _main(["validate", str(path)])
    assert code in (1, 2)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert "inflates past" in capsys.readouterr().err + message
    assert grown_kib < 200 << 10, f"peak memory grew {grown_kib >> 10} MiB"
