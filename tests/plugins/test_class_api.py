"""ComfyUI's node-class API: catalogue, hidden inputs, lists, IS_CHANGED, VALIDATE_INPUTS, lazy
inputs, failures with the pack's name, import failures explained, `nodes` not shadowed."""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")

BASICS = '''
    import nodes
    import folder_paths
    import comfy.utils
    import comfy.model_management

    class AnyType(str):
        def __ne__(self, other):
            return False

    CALLS = {"invert": 0, "changed": 0, "stamp": "a"}

    class Invert:
        DESCRIPTION = "1 - image"
        CATEGORY = "pack/image"
        RETURN_TYPES = ("IMAGE", "STRING")
        RETURN_NAMES = ("image", "who")
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"image": ("IMAGE",),
                                 "amount": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.1})},
                    "optional": {"mask": ("MASK",), "mode": (["keep", "flip"], {"default": "keep"})},
                    "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra": "EXTRA_PNGINFO"}}

        def run(self, image, amount, mode="keep", mask=None, unique_id=None, prompt=None, extra=None):
            CALLS["invert"] += 1
            bar = comfy.utils.ProgressBar(2)
            bar.update(1)
            bar.update(1)
            comfy.model_management.throw_exception_if_processing_interrupted()
            return (1.0 - image * amount, f"{unique_id} {sorted(prompt)} {extra} {mask is None} {nodes.MAX_RESOLUTION}")

    class Split:
        RETURN_TYPES = ("STRING",)
        OUTPUT_IS_LIST = (True,)
        FUNCTION = "split"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"default": "a,b,c", "multiline": True})}}

        def split(self, text):
            return (text.split(","),)

    class Upper:
        RETURN_TYPES = ("STRING",)
        FUNCTION = "up"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"forceInput": True})}}

        def up(self, text):
            return (text.upper(),)

    class Join:
        INPUT_IS_LIST = True
        OUTPUT_NODE = True
        RETURN_TYPES = ("STRING",)
        FUNCTION = "join"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": (AnyType("*"), {}), "sep": ("STRING", {"default": "+"})}}

        def join(self, text, sep):
            joined = sep[0].join(str(t) for t in text)
            return {"ui": {"text": [joined]}, "result": (joined,)}

    class Stamp:
        RETURN_TYPES = ("STRING",)
        FUNCTION = "stamp"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 10})}}

        @classmethod
        def IS_CHANGED(cls, seed):
            CALLS["changed"] += 1
            return CALLS["stamp"]

        def stamp(self, seed):
            return (f"{CALLS['stamp']}{seed}",)

    class Always:
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        @classmethod
        def IS_CHANGED(cls):
            return float("nan")

        def go(self):
            return (1,)

    class Even:
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"n": ("INT", {"default": 0, "min": 0, "max": 100})}}

        @classmethod
        def VALIDATE_INPUTS(cls, n):
            return True if n % 2 == 0 else f"{n} is odd"

        def go(self, n):
            return (n,)

    class Pick:
        RETURN_TYPES = ("STRING",)
        FUNCTION = "pick"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"first": ("BOOLEAN", {"default": True}),
                                 "a": ("STRING", {"forceInput": True, "lazy": True}),
                                 "b": ("STRING", {"forceInput": True, "lazy": True})}}

        def check_lazy_status(self, first, a=None, b=None):
            CALLS.setdefault("lazy", []).append((first, a, b))
            return ["a"] if first else ["b"]

        def pick(self, first, a, b):
            return (a if first else b,)

    class Boom:
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"x": ("INT", {"default": 1})}}

        def go(self, x):
            raise ValueError("the pack's own bug")

    class Saver(nodes.PreviewImage):
        pass

    NODE_CLASS_MAPPINGS = {"PackInvert": Invert, "PackSplit": Split, "PackUpper": Upper, "PackJoin": Join,
                           "PackStamp": Stamp, "PackAlways": Always, "PackEven": Even, "PackPick": Pick,
                           "PackBoom": Boom, "PackSaver": Saver}
    NODE_DISPLAY_NAME_MAPPINGS = {"PackInvert": "Invert (pack)"}
'''


@pytest.fixture
def loaded(install):
    install.pack("basics", {"__init__.py": BASICS})
    (install.root / "input").mkdir()
    install.load()
    assert [f.message for f in install.registry.failures] == []
    return install


def pack_module():
    return sys.modules["latentflow_plugins.basics"]


def test_catalogue_has_comfyui_shapes(loaded):
    info = loaded.registry.object_info()
    invert = info["PackInvert"]
    assert invert["display_name"] == "Invert (pack)" and invert["category"] == "pack/image"
    assert invert["description"] == "1 - image" and invert["python_module"] == "custom_nodes/basics"
    assert invert["input"]["required"]["amount"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.1}]
    assert invert["input"]["optional"]["mode"][0] == ["keep", "flip"]
    assert set(invert["input"]["optional"]) == {"mask", "mode"}
    assert invert["input"]["hidden"] == {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra": "EXTRA_PNGINFO"}
    assert invert["output"] == ["IMAGE", "STRING"] and invert["output_name"] == ["image", "who"]
    assert info["PackUpper"]["input"]["required"]["text"] == ["STRING", {"forceInput": True}]
    assert info["PackJoin"]["input"]["required"]["text"][0] == "*" and info["PackJoin"]["output_node"]


def test_runs_with_hidden_inputs_progress_and_comfyui_images(loaded):
    image = torch.rand(1, 4, 5, 3)
    from PIL import Image

    Image.fromarray((image[0].numpy() * 255).round().astype("uint8")).save(loaded.root / "input" / "x.png")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
              "2": {"class_type": "PackInvert", "inputs": {"image": ["1", 0], "amount": 1.0}},
              "3": {"class_type": "PackJoin", "inputs": {"text": ["2", 1], "sep": "+"}},
              "4": {"class_type": "PackSaver", "inputs": {"images": ["2", 0]}}}
    result = loaded.run(prompt)
    assert result.status == "success", result.failure
    assert result.outputs["3"]["text"] == ["2 ['1', '2', '3', '4'] {'workflow': {'w': 1}} True 16384"]
    saved = result.outputs["4"]["images"][0]
    assert saved["type"] == "temp" and (loaded.root / "temp" / saved["filename"]).is_file()
    progress = [(e.data["value"], e.data["max"]) for e in loaded.events if e.type == "node_progress"]
    assert progress == [(1, 2), (2, 2)]


def test_list_outputs_map_downstream_nodes_as_comfyui_does(loaded):
    prompt = {"1": {"class_type": "PackSplit", "inputs": {"text": "a,b,c"}},
              "2": {"class_type": "PackUpper", "inputs": {"text": ["1", 0]}},
              "3": {"class_type": "PackJoin", "inputs": {"text": ["2", 0], "sep": "-"}}}
    result = loaded.run(prompt)
    assert result.outputs["3"] == {"text": ["A-B-C"]}  # Upper ran once per item, Join got the list


def test_is_changed_feeds_the_cache_key(loaded):
    calls = pack_module().CALLS
    prompt = {"1": {"class_type": "PackStamp", "inputs": {"seed": 3}},
              "2": {"class_type": "PackJoin", "inputs": {"text": ["1", 0]}}}
    assert loaded.run(prompt).outputs["2"] == {"text": ["a3"]}
    again = loaded.run(prompt)
    assert "1" in again.cached and calls["changed"] >= 2
    calls["stamp"] = "b"
    changed = loaded.run(prompt)
    assert "1" in changed.executed and changed.outputs["2"] == {"text": ["b3"]}
    always = {"1": {"class_type": "PackAlways", "inputs": {}}, "2": {"class_type": "PackJoin", "inputs": {"text": ["1", 0]}}}
    loaded.run(always)
    assert "1" in loaded.run(always).executed  # NaN: changed every time


def test_validate_inputs_refuses_before_anything_runs(loaded):
    from engine.validation import validate_document

    bad = validate_document({"1": {"class_type": "PackEven", "inputs": {"n": 3}},
                             "2": {"class_type": "PackJoin", "inputs": {"text": ["1", 0]}}}, loaded.registry)
    assert not bad.ok and "3 is odd" in bad.format()
    good = {"1": {"class_type": "PackEven", "inputs": {"n": 4}}, "2": {"class_type": "PackJoin", "inputs": {"text": ["1", 0]}}}
    assert loaded.run(good).outputs["2"] == {"text": ["4"]}


def test_lazy_inputs_run_only_when_check_lazy_status_asks(loaded):
    prompt = {"1": {"class_type": "PrimitiveString", "inputs": {"value": "left"}},
              "2": {"class_type": "PrimitiveString", "inputs": {"value": "right"}},
              "3": {"class_type": "PackPick", "inputs": {"first": False, "a": ["1", 0], "b": ["2", 0]}},
              "4": {"class_type": "PackJoin", "inputs": {"text": ["3", 0]}}}
    result = loaded.run(prompt)
    assert result.outputs["4"] == {"text": ["right"]}
    assert "1" not in result.executed and "1" not in result.cached  # the branch never asked for
    # asked first with neither lazy input evaluated, then again once "b" was
    assert pack_module().CALLS["lazy"] == [(False, None, None), (False, None, "right")]


def test_a_raising_node_fails_its_run_with_the_pack_name_and_the_next_run_works(loaded):
    failed = loaded.run({"1": {"class_type": "PackBoom", "inputs": {"x": 1}},
                         "2": {"class_type": "PackJoin", "inputs": {"text": ["1", 0]}}})
    assert failed.status == "failed"
    assert "custom_nodes/basics: PackBoom raised ValueError: the pack's own bug" in failed.failure.message
    ok = loaded.run({"1": {"class_type": "PackSplit", "inputs": {"text": "x"}},
                     "2": {"class_type": "PackJoin", "inputs": {"text": ["1", 0]}}})
    assert ok.status == "success"


def test_nodes_means_comfyuis_inside_packs_only(loaded):
    import nodes as ours

    assert hasattr(ours, "BUILTIN_PACKS")  # our package is untouched for everyone else
    assert pack_module().nodes.__name__ == "comfyui_nodes"
    assert pack_module().nodes.MAX_RESOLUTION == 16384 and "SaveImage" in pack_module().nodes.NODE_CLASS_MAPPINGS
    assert "nodes" not in [p.name for p in (loaded.root / "custom_nodes").iterdir()]


def test_our_own_plugins_still_load_next_to_a_comfyui_pack(install):
    install.pack("basics", {"__init__.py": BASICS})
    (install.custom_nodes / "ours.py").write_text(
        "from engine.api import Int, Out, node\nfrom nodes.values import LatentValue\n\n"
        "@node('Double')\ndef double(x: Int() = 1) -> Out(x='INT'):\n    return 2 * x\n\nNODES = [double]\n")
    install.load()
    assert "ours.Double" in install.registry and "PackInvert" in install.registry


def test_import_failures_name_the_missing_module_and_what_we_offer(install):
    install.pack("needs_pkg", {"__init__.py": "import surely_not_installed_pkg\nNODE_CLASS_MAPPINGS = {}\n",
                               "requirements.txt": "surely-not-installed-pkg>=1\n"})
    install.pack("needs_internal", {"__init__.py": "import comfy.ldm.modules.attention\nNODE_CLASS_MAPPINGS = {}\n"})
    install.pack("needs_name", {"__init__.py": "from comfy.utils import no_such_helper\nNODE_CLASS_MAPPINGS = {}\n"})
    # Harmless if the guard failed: the command runs `python -c pass`, and pip is imported, never called.
    install.pack("installs", {"__init__.py": "import subprocess, sys\n"
                              "subprocess.check_call([sys.executable, '-c', 'pass', '-m pip install x'])\n"
                              "NODE_CLASS_MAPPINGS = {}\n"})
    install.pack("imports_pip", {"__init__.py": "import pip\nNODE_CLASS_MAPPINGS = {}\n"})
    install.pack("basics", {"__init__.py": BASICS})
    install.load()
    assert "PackInvert" in install.registry  # the rest loads
    assert "needs the Python package 'surely_not_installed_pkg'" in install.failure("needs_pkg")
    assert "surely-not-installed-pkg>=1" in install.failure("needs_pkg")
    message = install.failure("needs_internal")
    assert "ComfyUI's internal module 'comfy.ldm" in message and "closest offered:" in message
    assert "comfy.utils.no_such_helper" in install.failure("needs_name")
    assert "common_upscale" in install.failure("needs_name")
    assert "never installed" in install.failure("installs") and "never installed" in install.failure("imports_pip")
