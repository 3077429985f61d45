import pytest

from engine.api import Choice, Context, Float, Int, NodeDefinitionError, Out, Text, node
from engine.registry import NodeRegistry, node_info


def test_signature_becomes_schema():
    @node("Demo.Thing", display_name="Thing", category="demo", version=3)
    def thing(model: "MODEL", steps: Int(min=1, max=100) = 20, cfg: Float(min=0, max=30, step=0.5) = 7.0,
              prompt: Text(multiline=True) = "", sampler: Choice(choices=("euler", "ddim")) = "euler",
              mask: "MASK" = None, ctx: Context = None) -> Out(latent="LATENT", info="STRING"):
        """Does a thing.

        More detail."""

    assert thing.id == "Demo.Thing" and thing.version == 3 and thing.category == "demo"
    assert thing.display_name == "Thing"
    assert thing.description.startswith("Does a thing.")
    assert [i.name for i in thing.inputs] == ["model", "steps", "cfg", "prompt", "sampler", "mask"]
    assert thing.context_param == "ctx"
    model, steps, cfg, prompt, sampler, mask = thing.inputs
    assert model.required and model.widget is None and model.type == "MODEL"
    assert not mask.required and mask.type == "MASK"
    assert steps.default == 20 and steps.widget.min == 1 and steps.widget.max == 100
    assert sampler.type == "COMBO"
    assert [(o.name, o.type) for o in thing.outputs] == [("latent", "LATENT"), ("info", "STRING")]
    assert thing.output_index("info") == 1 and thing.output_index(0) == 0 and thing.output_index("x") is None


def test_object_info_shape_matches_comfyui():
    @node("Sampler", category="sampling")
    def sampler(model: "MODEL", seed: Int(min=0, max=2**32, control_after_generate=True) = 0,
                name: Choice(choices=lambda: ["a", "b"]) = "a", mask: "MASK" = None) -> Out(latent="LATENT"):
        """Samples."""

    info = node_info(sampler, "pack")
    assert info["input"]["required"]["model"] == ["MODEL", {}]
    assert info["input"]["required"]["seed"] == ["INT", {"default": 0, "min": 0, "max": 2**32, "step": 1,
                                                         "control_after_generate": True}]
    assert info["input"]["required"]["name"] == [["a", "b"], {"default": "a"}]
    assert info["input"]["optional"] == {"mask": ["MASK", {}]}
    assert info["output"] == ["LATENT"] and info["output_name"] == ["latent"]
    assert info["output_node"] is False and info["category"] == "sampling"
    assert info["display_name"] == "Sampler" and info["description"] == "Samples."


def test_computed_choices_are_evaluated_each_time():
    files = ["one.safetensors"]

    @node("Load")
    def load(name: Choice(choices=lambda: list(files)) = "one.safetensors") -> "MODEL":
        pass

    registry = NodeRegistry()
    registry.register(load, "test")
    assert registry.object_info()["Load"]["input"]["required"]["name"][0] == ["one.safetensors"]
    files.append("two.safetensors")
    assert registry.object_info()["Load"]["input"]["required"]["name"][0] == ["one.safetensors", "two.safetensors"]


def test_bad_annotation_is_rejected_with_a_fix():
    with pytest.raises(NodeDefinitionError, match="annotate it with a socket type"):
        @node("Bad")
        def bad(x: int) -> "INT":
            return x


def test_bad_default_is_rejected():
    with pytest.raises(NodeDefinitionError, match="above the maximum"):
        @node("BadDefault")
        def bad(x: Int(min=0, max=5) = 9) -> "INT":
            return x


def test_widget_checks():
    assert Int(min=0, max=10).check(11) == "11 is above the maximum 10"
    assert "integer" in Int().check("3")
    assert "write 3" in Int().check(3.0)
    assert Int().check(True) is not None  # booleans are not integers
    assert Float(min=0.0).check(-0.5) == "-0.5 is below the minimum 0.0"
    assert Float().check(float("nan")) == "expected a number, got NaN"
    assert Choice(choices=("a",)).check("b").startswith("'b' is not among the choices")
    assert Text(max_length=3).check("abcd") is not None
    assert Int(min=0, max=10).check(10) is None
