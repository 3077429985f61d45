"""Refused prompts answer as ComfyUI's: 400 ``{error, node_errors}``, one test per error type."""

from __future__ import annotations

import pytest
import pytest_asyncio

from engine.api import Choice, Out, node
from tests.web.fake_pack import make_fake_registry, txt2img_document
from tests.web.helpers import api_prompt
from web.app import create_app

pytestmark = pytest.mark.asyncio


async def refused(client, prompt: dict) -> dict:
    response = await client.post("/prompt", json={"prompt": prompt})
    body = await response.json()
    assert response.status == 400, body
    assert set(body) >= {"error", "node_errors"}
    assert set(body["error"]) >= {"type", "message", "details", "extra_info"}
    for node_id, entry in body["node_errors"].items():
        assert set(entry) == {"errors", "dependent_outputs", "class_type"}, node_id
        for error in entry["errors"]:
            assert set(error) >= {"type", "message", "details", "extra_info"}
    queue = await (await client.get("/queue")).json()
    assert queue == {"queue_running": [], "queue_pending": []}  # nothing was queued
    return body


def only_error(body: dict, node_id: str) -> dict:
    (error,) = body["node_errors"][node_id]["errors"]
    return error


@pytest_asyncio.fixture
async def client(make_app, aiohttp_client):
    return await aiohttp_client(make_app())


async def test_value_not_in_list(client):
    prompt = api_prompt(txt2img_document())
    prompt["1"]["inputs"]["ckpt_name"] = "sd15.safetensors"
    body = await refused(client, prompt)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    error = only_error(body, "1")
    assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "ckpt_name"
    assert error["extra_info"]["received_value"] == "sd15.safetensors"
    assert error["details"] == "ckpt_name: 'sd15.safetensors' not in ['tiny-shapes.safetensors', 'other.safetensors']"
    assert body["node_errors"]["1"]["class_type"] == "LoadCheckpoint"
    assert body["node_errors"]["1"]["dependent_outputs"] == ["7"]
    assert "ckpt_name: 'sd15.safetensors' not in" in body["error"]["details"]


async def test_required_input_missing(client):
    prompt = api_prompt(txt2img_document())
    del prompt["5"]["inputs"]["positive"]
    error = only_error(await refused(client, prompt), "5")
    assert error["type"] == "required_input_missing" and error["extra_info"] == {"input_name": "positive"}
    assert error["details"] == "positive"


async def test_invalid_input_type_for_a_widget_and_for_a_socket(client):
    prompt = api_prompt(txt2img_document())
    prompt["5"]["inputs"]["steps"] = "many"
    prompt["6"]["inputs"]["vae"] = "a literal where a VAE link belongs"
    body = await refused(client, prompt)
    steps = only_error(body, "5")
    assert steps["type"] == "invalid_input_type" and steps["extra_info"]["input_name"] == "steps"
    assert steps["extra_info"]["received_value"] == "many"
    vae = only_error(body, "6")
    assert vae["type"] == "invalid_input_type" and vae["extra_info"]["input_name"] == "vae"


async def test_value_smaller_than_min_and_bigger_than_max(client):
    prompt = api_prompt(txt2img_document())
    prompt["4"]["inputs"]["width"] = 8
    prompt["4"]["inputs"]["height"] = 100000
    errors = {e["extra_info"]["input_name"]: e for e in (await refused(client, prompt))["node_errors"]["4"]["errors"]}
    assert errors["width"]["type"] == "value_smaller_than_min" and errors["width"]["extra_info"]["received_value"] == 8
    assert errors["height"]["type"] == "value_bigger_than_max"
    assert errors["width"]["extra_info"]["input_config"][0] == "INT"
    assert errors["width"]["extra_info"]["input_config"][1]["min"] == 64


async def test_return_type_mismatch(client):
    prompt = api_prompt(txt2img_document())
    prompt["6"]["inputs"]["latent"] = ["2", 0]  # a CONDITIONING output into a LATENT input
    error = only_error(await refused(client, prompt), "6")
    assert error["type"] == "return_type_mismatch"
    assert error["extra_info"] == {"input_name": "latent", "received_type": "CONDITIONING", "linked_node": ["2", 0]}
    assert error["details"] == "latent, received_type(CONDITIONING) mismatch input_type(LATENT)"


async def test_bad_linked_input(client):
    prompt = api_prompt(txt2img_document())
    prompt["6"]["inputs"]["vae"] = ["99", 0]
    error = only_error(await refused(client, prompt), "6")
    assert error["type"] == "bad_linked_input" and error["extra_info"]["linked_node"] == ["99", 0]


async def test_exception_during_inner_validation(settings, aiohttp_client):
    def broken_choices() -> list[str]:
        raise OSError("the models folder is not readable")

    @node("BrokenLoader", category="test")
    def broken(name: Choice(choices=broken_choices) = "x") -> Out(image="IMAGE"):
        """Its choice list cannot be read."""
        return {"size": (8, 8), "seed": 0}

    registry = make_fake_registry(None, settings.input_dir)
    registry.register_pack([broken], "tests.broken")
    client = await aiohttp_client(create_app(registry, settings))
    prompt = {"1": {"class_type": "BrokenLoader", "inputs": {"name": "x"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}
    error = only_error(await refused(client, prompt), "1")
    assert error["type"] == "exception_during_inner_validation"
    assert error["extra_info"]["exception_type"] == "OSError"
    assert error["extra_info"]["exception_message"] == "the models folder is not readable"
    assert isinstance(error["extra_info"]["traceback"], list)


async def test_prompt_no_outputs(client):
    prompt = api_prompt(txt2img_document())
    del prompt["7"]
    body = await refused(client, prompt)
    assert body["error"]["type"] == "prompt_no_outputs" and body["node_errors"] == {}


async def test_invalid_prompt_shapes(client):
    for prompt in ([1, 2], "text", {"version": 1, "nodes": [1]}):
        body = await refused(client, prompt)
        assert body["error"]["type"] == "invalid_prompt" and body["node_errors"] == {}, prompt


async def test_no_prompt(client):
    response = await client.post("/prompt", json={"client_id": "x"})
    body = await response.json()
    assert response.status == 400 and body["error"]["type"] == "no_prompt" and body["node_errors"] == {}


async def test_unknown_class_type_is_missing_node_type(client):
    prompt = api_prompt(txt2img_document())
    prompt["8"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "x.pth"},
                   "_meta": {"title": "Load Upscale Model"}}
    body = await refused(client, prompt)
    assert body["error"]["type"] == "missing_node_type"  # the frontend then looks for missing packs
    error = only_error(body, "8")
    assert error["type"] == "missing_node_type" and body["node_errors"]["8"]["class_type"] == "UpscaleModelLoader"
    assert error["extra_info"] == {"node_id": "8", "class_type": "UpscaleModelLoader",
                                   "node_title": "Load Upscale Model"}


async def test_node_without_class_type_gets_a_node_level_error(client):
    """The ComfyUI frontend leaves class_type out for node types it does not know."""
    prompt = api_prompt(txt2img_document())
    prompt["9"] = {"inputs": {"image": ["6", 0]}, "_meta": {"title": "Mystery Node"}}
    body = await refused(client, prompt)
    assert body["error"]["type"] == "missing_node_type"
    assert "Mystery Node" in body["error"]["message"] and "#9" in body["error"]["message"]
    assert "version" not in body["error"]["message"]  # not a schema dump of our own format
    assert set(body["node_errors"]) == {"9"}  # only that node: the rest of the prompt is fine
    error = only_error(body, "9")
    assert error["type"] == "missing_node_type" and error["extra_info"]["node_title"] == "Mystery Node"
    assert body["node_errors"]["9"]["class_type"] is None


async def test_dependency_cycle_is_named(client):
    prompt = api_prompt(txt2img_document())
    prompt["5"]["inputs"]["latent"] = ["5", 0]
    body = await refused(client, prompt)
    assert any(e["type"] == "dependency_cycle" for e in body["node_errors"]["5"]["errors"])


async def test_several_problems_are_all_reported_with_their_outputs(client):
    prompt = api_prompt(txt2img_document())
    prompt["1"]["inputs"]["ckpt_name"] = "nope"
    prompt["5"]["inputs"]["cfg"] = 99.0
    body = await refused(client, prompt)
    assert set(body["node_errors"]) == {"1", "5"}
    assert body["node_errors"]["5"]["errors"][0]["type"] == "value_bigger_than_max"
    assert body["node_errors"]["5"]["dependent_outputs"] == ["7"]
    assert body["error"]["details"].count("\n") == 1  # one line per problem


async def test_inputs_a_node_does_not_declare_are_a_warning_for_comfyui_prompts(client):
    prompt = api_prompt(txt2img_document())
    prompt["5"]["inputs"]["denoise"] = 1.0  # ComfyUI ignores undeclared inputs
    response = await client.post("/prompt", json={"prompt": prompt})
    body = await response.json()
    assert response.status == 200 and body["node_errors"] == {}
    assert [(w["code"], w["input"]) for w in body["warnings"]] == [("unknown_input", "denoise")]
