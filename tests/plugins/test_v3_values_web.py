"""The V3 schema API, values at the boundary (LATENT, CONDITIONING, MODEL/CLIP/VAE), and the
web side of packs: WEB_DIRECTORY scripts and a pack's own routes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

V3 = '''
    from comfy_api.latest import ComfyExtension, io, ui

    class Scale(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="V3Scale", display_name="Scale (V3)", category="v3", description="x * k",
                             inputs=[io.Float.Input("x", default=1.0, min=0.0, max=10.0),
                                     io.Combo.Input("k", options=["2", "3"]),
                                     io.String.Input("note", optional=True, multiline=True)],
                             outputs=[io.Float.Output(display_name="scaled"), io.String.Output(is_output_list=True)],
                             hidden=[io.Hidden.unique_id])

        @classmethod
        def fingerprint_inputs(cls, **kwargs):
            return "same"

        @classmethod
        def execute(cls, x, k, note=None):
            return io.NodeOutput(x * int(k), [cls.hidden.unique_id, str(note)], ui=ui.PreviewText("shown"))

    class Extension(ComfyExtension):
        async def get_node_list(self):
            return [Scale]

    async def comfy_entrypoint():
        return Extension()
'''

LATENTS = '''
    class PassLatent:
        RETURN_TYPES = ("LATENT",)
        FUNCTION = "go"
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"samples": ("LATENT",)}}
        def go(self, samples):
            return (samples,)

    class DoubleLatent:
        RETURN_TYPES = ("LATENT",)
        FUNCTION = "go"
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"samples": ("LATENT",)}}
        def go(self, samples):
            out = samples.copy()
            out["samples"] = samples["samples"] * 2
            return (out,)

    NODE_CLASS_MAPPINGS = {"PassLatent": PassLatent, "DoubleLatent": DoubleLatent}
    WEB_DIRECTORY = "./web"

    from server import PromptServer
    from aiohttp import web

    @PromptServer.instance.routes.get("/latentpack/hello")
    async def hello(request):
        PromptServer.instance.send_sync("latentpack.hello", {"n": 1})
        return web.json_response({"hello": True})
'''


def test_v3_nodes_map_onto_our_specs(install):
    install.pack("v3pack", {"__init__.py": V3})
    install.load()
    assert install.registry.failures == []
    info = install.registry.object_info()["V3Scale"]
    assert info["display_name"] == "Scale (V3)" and info["category"] == "v3" and info["description"] == "x * k"
    assert info["input"]["required"]["k"][0] == ["2", "3"] and "note" in info["input"]["optional"]
    assert info["output_name"] == ["scaled", "STRING"] and info["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}
    result = install.run({"5": {"class_type": "V3Scale", "inputs": {"x": 1.5, "k": "3"}},
                          "6": {"class_type": "ShowValue", "inputs": {"value": ["5", 0]}}})
    assert result.status == "success", result.failure
    assert install.executor.cache_keys  # fingerprint_inputs is the node's fingerprint
    spec = install.registry.get("V3Scale")
    assert spec.fingerprint is not None and spec.fingerprint(x=1.5, k="3") == "same"
    values = spec.function(x=2.0, k="2", note=None, _latentflow_ctx=None)
    assert values.values[0] == 4.0 and list(values.values[1]) == [None, "None"]  # no run context: no unique id
    assert values.ui == {"text": ["shown"]}


def test_latents_convert_without_copies_and_round_trip(install):
    from nodes.values import LatentValue

    install.pack("latents", {"__init__.py": LATENTS})
    install.load()
    samples, mask = torch.randn(2, 4, 3, 3), torch.ones(2, 3, 3)
    ours = LatentValue(samples, noise_mask=mask, width=24, height=24, batch_index=(0, 1))
    passed = install.registry.get("PassLatent").function(samples=ours, _latentflow_ctx=None).values[0]
    assert passed is ours  # handed on unchanged: the very same value, nothing lost
    doubled = install.registry.get("DoubleLatent").function(samples=ours, _latentflow_ctx=None).values[0]
    assert isinstance(doubled, LatentValue) and torch.equal(doubled.samples, samples * 2)
    assert doubled.noise_mask is mask and doubled.batch_index == (0, 1)


def test_conditioning_and_models_at_the_boundary(install):
    from comfy_packs.models import ComfyModel, NotSupportedError
    from comfy_packs.values import conditioning_from_comfy, conditioning_to_comfy, from_comfy, to_comfy
    from nodes.values import ModelValue
    from sgm.text.conditioning import Area, Condition

    context, pooled = torch.randn(1, 77, 8), torch.randn(1, 8)
    condition = Condition(context=context, pooled=pooled, area=Area(x=1, y=2, width=3, height=4), strength=0.5,
                          extra={"prompt": "cat"})
    comfy = conditioning_to_comfy([condition])
    assert comfy[0][0] is context and comfy[0][1]["pooled_output"] is pooled
    assert comfy[0][1]["area"] == (4, 3, 2, 1) and comfy[0][1]["strength"] == 0.5
    edited = [[c, {**d, "strength": 2.0}] for c, d in comfy]  # a plain dict now: built from its keys
    back = conditioning_from_comfy(edited, "test")[0]
    assert back.context is context and back.strength == 2.0 and back.area == Area(1, 2, 3, 4)
    assert conditioning_from_comfy(comfy, "test")[0].extra == {"prompt": "cat"}  # origin kept
    with pytest.raises(NotSupportedError, match="ControlNet"):
        conditioning_from_comfy([[context, {"control": object()}]], "PackNode")
    model = ModelValue(unet=torch.nn.Linear(1, 1), model_sampling=None, family="sd1", name="m")
    wrapped = to_comfy(model)
    assert isinstance(wrapped, ComfyModel) and from_comfy(wrapped.clone(), "MODEL", "t") is model
    with pytest.raises(NotSupportedError, match="needs ComfyUI's internal weight-patch format"):
        wrapped.add_patches({})
    assert not hasattr(wrapped, "model_sampling_hook")  # an AttributeError too: feature probes see False
    patched = wrapped.clone()
    patched.model_options["transformer_options"]["patches"] = {"x": 1}
    with pytest.raises(NotSupportedError, match="model_options"):
        from_comfy(patched, "MODEL", "PackNode")


@pytest.mark.asyncio
async def test_web_directory_and_pack_routes_are_served(install, aiohttp_client):
    from web.app import create_app

    folder = install.pack("latents", {"__init__.py": LATENTS})
    (folder / "web").mkdir()
    (folder / "web" / "widget.js").write_text("console.log('pack');")
    install.load()
    client = await aiohttp_client(create_app(install.registry, install.settings))
    listed = await (await client.get("/api/extensions")).json()
    assert "/extensions/latents/widget.js" in listed
    script = await client.get("/extensions/latents/widget.js")
    assert script.status == 200 and "pack" in await script.text()
    assert (await client.get("/extensions/latents/..%2F__init__.py")).status in (400, 404)
    for path in ("/latentpack/hello", "/api/latentpack/hello"):
        response = await client.get(path)
        assert response.status == 200 and await response.json() == {"hello": True}
