"""Fuzzed requests (seeded, bounded): every answer is JSON with a 4xx or 2xx status, never a 500.

Bodies are mutated shipped-style workflows, ComfyUI-shaped prompts, byte-level damage,
odd encodings and charsets, deep nesting, huge numbers and odd headers. Afterwards the
server still answers and runs a valid prompt.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from tests.web.fake_pack import txt2img_document
from tests.web.helpers import wait_for_history

pytestmark = pytest.mark.asyncio

SEED = 20261205
CASES = 4000


def _reject_constants(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name} in an answer")


def _api_prompt(document: dict[str, Any]) -> dict[str, Any]:
    """Our document as a ComfyUI API prompt (links stay [id, index])."""
    prompt = {}
    for node_id, node in document["nodes"].items():
        inputs = {k: ([v[0], 0] if isinstance(v, list) and len(v) == 2 else v) for k, v in node["inputs"].items()}
        prompt[node_id] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": node["type"]}}
    return prompt


ODD_VALUES: list[Any] = [None, True, False, 0, -1, 2**63, -(2**64), 10**400, 1e308, -1e-320, "", "x" * 5000,
                         "\x00", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "💥",
                         [], [None], ["1"], ["1", 99], ["nope", 0], [1, 2, 3], {}, {"a": 1}, 3.5, "NaN"]


def _mutate_structure(rng: random.Random, prompt: Any) -> Any:
    prompt = copy.deepcopy(prompt)
    for _ in range(rng.randint(1, 4)):
        nodes = prompt.get("nodes", prompt) if isinstance(prompt, dict) else None
        if not isinstance(nodes, dict) or not nodes:
            break
        node_id = rng.choice(list(nodes))
        node = nodes[node_id]
        action = rng.randrange(7)
        if action == 0 and isinstance(node, dict) and isinstance(node.get("inputs"), dict) and node["inputs"]:
            node["inputs"][rng.choice(list(node["inputs"]))] = rng.choice(ODD_VALUES)
        elif action == 1 and isinstance(node, dict) and isinstance(node.get("inputs"), dict) and node["inputs"]:
            del node["inputs"][rng.choice(list(node["inputs"]))]
        elif action == 2:
            nodes[node_id] = rng.choice(ODD_VALUES)
        elif action == 3 and isinstance(node, dict):
            key = rng.choice(["type", "class_type", "inputs", "_meta"])
            node[key] = rng.choice(ODD_VALUES)
        elif action == 4:
            nodes[rng.choice(["", "0", "-1", "x" * 300, "1e9", "💥"])] = copy.deepcopy(node)
        elif action == 5:
            del nodes[node_id]
        else:
            prompt[rng.choice(["version", "nodes", "meta", "ui"])] = rng.choice(ODD_VALUES)
    return prompt


def _damage_bytes(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    action = rng.randrange(5)
    if action == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif action == 1:
        del data[rng.randrange(len(data)):]
    elif action == 2:
        position = rng.randrange(len(data))
        data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif action == 3:
        return body.decode().encode(rng.choice(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]),
                                    errors="replace")
    else:
        return b"\xff\xfe" + body
    return bytes(data)


def _special_bodies() -> list[tuple[bytes, str]]:
    json_type = "application/json"
    deep = [2000, 20_000, 100_000]
    bodies = [(b"[" * n + b"]" * n, json_type) for n in deep]
    bodies += [(b'{"prompt":' + b'{"a":' * n + b"1" + b"}" * n + b"}", json_type) for n in deep]
    bodies += [
        (b'{"prompt": ' + b"9" * 5000 + b"}", json_type),
        (b'{"prompt": {"1": {"class_type": "EmptyLatent", "inputs": {"width": ' + b"7" * 5000 + b"}}}}", json_type),
        (b'{"prompt": NaN}', json_type), (b'{"prompt": Infinity}', json_type), (b'{"prompt": -Infinity}', json_type),
        (b"", json_type), (b"null", json_type), (b"[]", json_type), (b'"text"', json_type), (b"42", json_type),
        (b'{"prompt": {}}', json_type), (b'{"prompt": []}', json_type), (b'{"prompt": "x"}', json_type),
        (b'{"prompt": {"1": {}}}', json_type),
        ('{"prompt": "é"}'.encode("latin-1"), "application/json; charset=latin-1"),
        ('{"prompt": "é"}'.encode("utf-16"), "application/json; charset=utf-16"),
        (b'{"prompt": {}}', "application/json; charset=no-such-charset"),
        (b'{"prompt": {}}', "text/plain"), (b'{"prompt": {}}', "multipart/form-data; boundary=x"),
        (b"\x00" * 100, json_type), (b'{"prompt": {}, "prompt": 1}', json_type),
        (b'{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}}', json_type),
    ]
    return bodies


async def _check(response) -> int:
    text = await response.text(errors="replace")
    assert response.status < 500, f"{response.status}: {text[:300]}"
    assert response.content_type == "application/json", (response.status, response.content_type, text[:200])
    json.loads(text, parse_constant=_reject_constants)
    return response.status


async def test_fuzzed_prompts_never_get_a_500_and_the_server_stays_healthy(make_app, aiohttp_client):
    rng = random.Random(SEED)
    client = await aiohttp_client(make_app())
    base = txt2img_document(seed=1)
    statuses: dict[int, int] = {}
    for body, content_type in _special_bodies():
        status = await _check(await client.post("/api/prompt", data=body, headers={"Content-Type": content_type}))
        statuses[status] = statuses.get(status, 0) + 1
    for index in range(CASES):
        shape = rng.choice([base, _api_prompt(base)])
        prompt = _mutate_structure(rng, shape)
        envelope: Any = {"prompt": prompt, "client_id": rng.choice(["c", None, 5, ""])}
        if rng.random() < 0.1:
            envelope["extra_data"] = rng.choice(ODD_VALUES)
        if rng.random() < 0.1:
            envelope["number"] = rng.choice(ODD_VALUES)
        if rng.random() < 0.1:
            envelope["prompt_id"] = rng.choice(ODD_VALUES)
        body = json.dumps(envelope, allow_nan=True).encode()
        if rng.random() < 0.3:
            body = _damage_bytes(rng, body)
        status = await _check(await client.post("/api/prompt", data=body,
                                                headers={"Content-Type": "application/json"}))
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200 and index % 50 == 0:
            await client.post("/api/queue", json={"clear": True})
    assert statuses.get(400, 0) > CASES // 3, statuses  # the fuzzer reaches validation, not only the parser
    for path in ("/api/object_info", "/api/queue", "/api/history", "/api/system_stats"):
        await _check(await client.get(path))
    await client.post("/api/queue", json={"clear": True})
    response = await client.post("/api/prompt", json={"prompt": txt2img_document(seed=7)})
    assert response.status == 200, await response.text()
    entry = await wait_for_history(client, (await response.json())["prompt_id"], timeout=30)
    assert entry["status"]["completed"]


async def test_odd_headers_and_query_strings_get_json_answers(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    for headers in ({"Authorization": "Bearer tökén".encode("utf-8").decode("latin-1")},
                    {"Content-Type": "application/json; charset=\"\""}, {"Content-Type": "application/json; charset=utf-99"}, {"Origin": "null"},
                    {"Content-Length": "5"}):
        await _check(await client.post("/api/prompt", data=b'{"prompt": {}}', headers=headers))
    for query in ("max_items=-1", "max_items=1e999", "max_items=" + "9" * 400, "offset=x", "offset=-5"):
        await _check(await client.get(f"/api/history?{query}"))
    for query in ("filename=%00.png", "filename=../x.png", "filename=a.png&type=nope", "filename=&subfolder=..",
                  "filename=" + "a" * 5000):
        response = await client.get(f"/api/view?{query}")
        assert response.status in (400, 403, 404), (query, response.status)


async def test_upload_names_with_nul_or_control_characters_are_refused_with_400(make_app, aiohttp_client):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    client = await aiohttp_client(make_app())
    for name in (b"a\x00b.png", b"a\x01.png", b"\x7f.png", b"tab\there.png"):
        # written by hand: aiohttp's client refuses to send such names in a header
        body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"" + name + b"\"\r\n"
                b"Content-Type: image/png\r\n\r\n" + buffer.getvalue() + b"\r\n--XyZ--\r\n")
        response = await client.post("/api/upload/image", data=body,
                                     headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
        status = await _check(response)
        assert status == 400, (name, status, await response.text())
