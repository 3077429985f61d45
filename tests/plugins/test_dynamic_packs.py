"""ComfyUI packs' dynamic execution: lazy inputs (class and V3 APIs), graph expansion with
GraphBuilder, ExecutionBlocker, and list semantics with our own nodes in between."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("torch")

DYNAMIC = '''
    import os
    import folder_paths
    from comfy_execution.graph import ExecutionBlocker
    from comfy_execution.graph_utils import GraphBuilder, is_link

    CALLS = {"count": 0, "lazy": []}
    # legacy packs copy their JavaScript next to "ComfyUI's folder" at import
    COMFY_ROOT = os.path.dirname(folder_paths.__file__)
    os.makedirs(os.path.join(COMFY_ROOT, "web", "extensions", "dynamic"), exist_ok=True)

    class Count:
        """Counts its runs: the unused branch must leave it at zero."""
        RETURN_TYPES = ("STRING",)
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"default": "x"})}}

        def go(self, text):
            CALLS["count"] += 1
            return (text + "!",)

    class Explode:
        RETURN_TYPES = ("STRING",)
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"forceInput": True})}}

        def go(self, text):
            raise RuntimeError("the branch nobody asked for ran")

    class LazySwitch:
        RETURN_TYPES = ("STRING",)
        FUNCTION = "switch"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"use_a": ("BOOLEAN", {"default": True}),
                                 "a": ("STRING", {"lazy": True, "forceInput": True}),
                                 "b": ("STRING", {"lazy": True, "forceInput": True})}}

        def check_lazy_status(self, use_a, a, b):
            CALLS["lazy"].append((use_a, a, b))
            needed = "a" if use_a else "b"
            return [needed] if (a if use_a else b) is None else []

        def switch(self, use_a, a, b):
            return (a if use_a else b,)

    class Suffix:
        RETURN_TYPES = ("STRING",)
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"forceInput": True}), "suffix": ("STRING", {"default": "-"})}}

        def go(self, text, suffix):
            return (text + suffix,)

    class RepeatSuffix:
        """Expands into `times` Suffix nodes, built with GraphBuilder."""
        RETURN_TYPES = ("STRING", "INT")
        FUNCTION = "expand"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"forceInput": True}), "times": ("INT", {"default": 2, "min": 1})}}

        def expand(self, text, times):
            graph = GraphBuilder()
            current = text
            for i in range(times):
                step = graph.node("Suffix", text=current, suffix=str(i))
                current = step.out(0)
            assert is_link(current)
            return {"result": (current, times), "expand": graph.finalize()}

    class MaybeBlock:
        RETURN_TYPES = ("STRING", "STRING")
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"forceInput": True}), "block": ("BOOLEAN", {"default": True})}}

        def go(self, text, block):
            return (text, ExecutionBlocker(None) if block else text)

    class Explode2(Explode):
        pass

    class Items:
        RETURN_TYPES = ("INT",)
        OUTPUT_IS_LIST = (True,)
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"count": ("INT", {"default": 3})}}

        def go(self, count):
            return (list(range(1, count + 1)),)

    class Total:
        INPUT_IS_LIST = True
        RETURN_TYPES = ("STRING",)
        FUNCTION = "go"
        OUTPUT_NODE = True

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"values": ("*", {"forceInput": True})}}

        def go(self, values):
            text = "+".join(str(v) for v in values)
            return {"ui": {"text": [text]}, "result": (text,)}

    class LoopOpen:
        RETURN_TYPES = ("LOOP", "INT")
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT", {"default": 0})}}

        def go(self, value):
            return ("loop", value)

    class LoopClose:
        """Runs the body between LoopOpen and here again (by expanding a copy of it that ends in
        another LoopClose) until value reaches limit: the pattern of ComfyUI's loop packs."""
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"loop": ("LOOP",), "value": ("INT", {"forceInput": True}),
                                 "limit": ("INT", {"default": 3})},
                    "hidden": {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"}}

        def go(self, loop, value, limit, dynprompt, unique_id):
            CALLS.setdefault("close", []).append(value)
            if value >= limit:
                return (value,)
            this = dynprompt.get_node(unique_id)
            open_id = this["inputs"]["loop"][0]
            body, stack = set(), [this["inputs"]["value"][0]]
            while stack:
                node_id = stack.pop()
                if node_id in body or node_id == open_id:
                    continue
                body.add(node_id)
                stack.extend(v[0] for v in dynprompt.get_node(node_id)["inputs"].values() if is_link(v))
            graph = GraphBuilder()
            new_open = graph.node("DynLoopOpen", "open", value=value)
            for node_id in body:
                graph.node(dynprompt.get_node(node_id)["class_type"], node_id)
            for node_id in body:
                clone = graph.lookup_node(node_id)
                for name, v in dynprompt.get_node(node_id)["inputs"].items():
                    if is_link(v) and v[0] == open_id:
                        v = new_open.out(v[1])
                    elif is_link(v):
                        v = graph.lookup_node(v[0]).out(v[1])
                    clone.set_input(name, v)
            source, index = this["inputs"]["value"]
            again = graph.node("DynLoopClose", "again", loop=new_open.out(0),
                               value=graph.lookup_node(source).out(index), limit=limit)
            return {"result": (again.out(0),), "expand": graph.finalize()}

    class AddOne:
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"x": ("INT", {"forceInput": True})}}

        def go(self, x):
            return (x + 1,)

    class WhoFeeds:
        """A rawLink input gets the link itself; a hidden entry that is a type is an input only a
        prompt (or an expansion) sets."""
        RETURN_TYPES = ("STRING",)
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"src": ("STRING", {"rawLink": True, "forceInput": True})},
                    "hidden": {"extra": ("STRING",), "unique_id": "UNIQUE_ID"}}

        def go(self, src, extra=None, unique_id=None):
            return (f"{src[0]}:{src[1]}:{extra}:{unique_id}",)

    NODE_CLASS_MAPPINGS = {"DynWhoFeeds": WhoFeeds, "DynLoopOpen": LoopOpen, "DynLoopClose": LoopClose, "DynAddOne": AddOne,
                           "DynCount": Count, "DynExplode": Explode, "DynSwitch": LazySwitch, "DynSuffix": Suffix,
                           "DynRepeat": RepeatSuffix, "DynMaybeBlock": MaybeBlock, "DynItems": Items,
                           "DynTotal": Total}
'''

# the expansion's class_type must be a registered id: use the pack's name for Suffix
DYNAMIC = DYNAMIC.replace('graph.node("Suffix"', 'graph.node("DynSuffix"')

V3_LAZY = '''
    from comfy_api.latest import ComfyExtension, io

    ASKED = []

    class Choose(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="V3Choose", category="v3",
                             inputs=[io.Int.Input("index", default=0, min=0, max=1),
                                     io.String.Input("first", lazy=True, force_input=True),
                                     io.String.Input("second", lazy=True, force_input=True)],
                             outputs=[io.String.Output()], hidden=[io.Hidden.unique_id])

        @classmethod
        def check_lazy_status(cls, index, first=None, second=None):
            ASKED.append((index, first, second))
            return ["first" if index == 0 else "second"]

        @classmethod
        def execute(cls, index, first=None, second=None):
            return io.NodeOutput(first if index == 0 else second)

    class Twice(io.ComfyNode):
        """Expands into two DynSuffix nodes, or blocks its output."""
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="V3Twice", category="v3",
                             inputs=[io.String.Input("text", force_input=True), io.Boolean.Input("block", default=False)],
                             outputs=[io.String.Output()], enable_expand=True)

        @classmethod
        def execute(cls, text, block):
            if block:
                return io.NodeOutput(block_execution="blocked by V3Twice")
            from comfy_execution.graph_utils import GraphBuilder
            graph = GraphBuilder()
            first = graph.node("DynSuffix", text=text, suffix="<")
            second = graph.node("DynSuffix", text=first.out(0), suffix=">")
            return io.NodeOutput(second.out(0), expand=graph.finalize())

    class Extension(ComfyExtension):
        async def get_node_list(self):
            return [Choose, Twice]

    async def comfy_entrypoint():
        return Extension()
'''

OURS = ("from engine.api import Int, Out, node\n\n"
        "@node('Double')\ndef double(x: 'INT') -> Out(x='INT'):\n    return 2 * x\n\nNODES = [double]\n")


@pytest.fixture
def loaded(install):
    install.pack("dynamic", {"__init__.py": DYNAMIC})
    install.pack("v3lazy", {"__init__.py": V3_LAZY})
    (install.custom_nodes / "ours.py").write_text(OURS)
    install.load()
    assert [f.message for f in install.registry.failures] == []
    return install


def pack(name):
    return sys.modules[f"latentflow_plugins.{name}"]


def switch_prompt(use_a: bool) -> dict:
    return {"1": {"class_type": "DynCount", "inputs": {"text": "used"}},
            "2": {"class_type": "DynCount", "inputs": {"text": "unused"}},
            "3": {"class_type": "DynExplode", "inputs": {"text": ["2", 0]}},
            "4": {"class_type": "DynSwitch", "inputs": {"use_a": use_a, "a": ["1", 0], "b": ["3", 0]}},
            "5": {"class_type": "DynTotal", "inputs": {"values": ["4", 0]}}}


def test_a_lazy_switch_runs_only_the_branch_it_asks_for(loaded):
    result = loaded.run(switch_prompt(True))
    assert result.status == "success", result.failure
    assert result.outputs["5"] == {"text": ["used!"]}
    assert pack("dynamic").CALLS["count"] == 1  # node 2 never ran, nor the exploding node 3
    assert pack("dynamic").CALLS["lazy"] == [(True, None, None), (True, "used!", None)]
    again = loaded.run(switch_prompt(True))
    assert again.executed == () and pack("dynamic").CALLS["count"] == 1
    other = loaded.run(switch_prompt(False))
    assert other.status == "failed" and "the branch nobody asked for ran" in other.failure.message


def test_v3_check_lazy_status_decides_what_runs(loaded):
    prompt = {"1": {"class_type": "DynCount", "inputs": {"text": "one"}},
              "2": {"class_type": "DynCount", "inputs": {"text": "two"}},
              "3": {"class_type": "V3Choose", "inputs": {"index": 1, "first": ["1", 0], "second": ["2", 0]}},
              "4": {"class_type": "DynTotal", "inputs": {"values": ["3", 0]}}}
    result = loaded.run(prompt)
    assert result.outputs["4"] == {"text": ["two!"]} and "1" not in result.executed
    assert pack("v3lazy").ASKED == [(1, None, None), (1, None, "two!")]


def test_v3_node_output_expands_and_blocks(loaded):
    prompt = {"1": {"class_type": "PrimitiveString", "inputs": {"value": "v3"}},
              "2": {"class_type": "V3Twice", "inputs": {"text": ["1", 0], "block": False}},
              "3": {"class_type": "DynTotal", "inputs": {"values": ["2", 0]}}}
    result = loaded.run(prompt)
    assert result.status == "success", result.failure
    assert result.outputs["3"] == {"text": ["v3<>"]} and sorted(result.expanded) == ["2.0.0.1", "2.0.0.2"]
    prompt["2"]["inputs"]["block"] = True
    blocked = loaded.run(prompt)
    assert blocked.status == "success" and "3" not in blocked.outputs
    assert blocked.blocked == {"3": "blocked by V3Twice"}
    assert any(e.type == "node_blocked" and e.node_id == "3" for e in loaded.events)


def test_graph_builder_expansion_runs_and_replaces_the_nodes_outputs(loaded):
    prompt = {"1": {"class_type": "PrimitiveString", "inputs": {"value": "go"}},
              "2": {"class_type": "DynRepeat", "inputs": {"text": ["1", 0], "times": 3}},
              "3": {"class_type": "DynTotal", "inputs": {"values": ["2", 0]}},
              "4": {"class_type": "DynTotal", "inputs": {"values": ["2", 1]}}}
    result = loaded.run(prompt)
    assert result.status == "success", result.failure
    assert result.outputs["3"] == {"text": ["go012"]} and result.outputs["4"] == {"text": ["3"]}
    assert sorted(result.expanded) == ["2.0.0.1", "2.0.0.2", "2.0.0.3"]  # GraphBuilder's ids, prefixed
    assert loaded.run(prompt).executed == ()  # the expanding node is cached with its outputs


def test_a_loop_expands_itself_again_until_done_reading_dynprompt(loaded):
    prompt = {"1": {"class_type": "DynLoopOpen", "inputs": {"value": 0}},
              "2": {"class_type": "DynAddOne", "inputs": {"x": ["1", 1]}},
              "3": {"class_type": "DynLoopClose", "inputs": {"loop": ["1", 0], "value": ["2", 0], "limit": 4}},
              "4": {"class_type": "DynTotal", "inputs": {"values": ["3", 0]}}}
    result = loaded.run(prompt)
    assert result.status == "success", result.failure
    assert result.outputs["4"] == {"text": ["4"]}
    assert pack("dynamic").CALLS["close"] == [1, 2, 3, 4]  # each expansion's LoopClose ran once
    assert len(result.expanded) == 9 and result.executed == ("1", "2", "3", "4")
    assert loaded.run(prompt).executed == ()  # the loop's result is cached


def test_writes_next_to_comfyuis_folder_land_in_the_users_folder(loaded):
    from pathlib import Path

    root = Path(pack("dynamic").COMFY_ROOT)
    assert root == loaded.root / "user" / "comfyui" and (root / "web" / "extensions" / "dynamic").is_dir()


def test_raw_links_and_typed_hidden_inputs(loaded):
    prompt = {"1": {"class_type": "DynCount", "inputs": {"text": "a"}},
              "2": {"class_type": "DynWhoFeeds", "inputs": {"src": ["1", 0], "extra": "given"}},
              "3": {"class_type": "DynTotal", "inputs": {"values": ["2", 0]}}}
    result = loaded.run(prompt)
    assert result.outputs["3"] == {"text": ["1:0:given:2"]}
    assert result.executed == ("1", "2", "3")  # the source of a raw link still runs first
    info = loaded.registry.object_info()["DynWhoFeeds"]
    assert info["input"]["hidden"] == {"unique_id": "UNIQUE_ID"} and "extra" in info["input"]["optional"]


def test_execution_blocker_stops_readers_silently(loaded):
    prompt = {"1": {"class_type": "PrimitiveString", "inputs": {"value": "t"}},
              "2": {"class_type": "DynMaybeBlock", "inputs": {"text": ["1", 0], "block": True}},
              "3": {"class_type": "DynTotal", "inputs": {"values": ["2", 0]}},
              "4": {"class_type": "DynExplode", "inputs": {"text": ["2", 1]}},
              "5": {"class_type": "DynTotal", "inputs": {"values": ["4", 0]}}}
    result = loaded.run(prompt)
    assert result.status == "success", result.failure
    assert result.outputs["3"] == {"text": ["t"]} and "5" not in result.outputs
    assert result.blocked == {"4": None, "5": None}
    prompt["2"]["inputs"]["block"] = False
    assert loaded.run(prompt).status == "failed"  # now node 4 runs, and raises


def test_list_outputs_feed_our_nodes_item_by_item_and_list_flags_are_listed(loaded):
    prompt = {"1": {"class_type": "DynItems", "inputs": {"count": 3}},
              "2": {"class_type": "ours.Double", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "DynTotal", "inputs": {"values": ["2", 0]}}}
    result = loaded.run(prompt)
    assert result.status == "success", result.failure
    assert result.outputs["3"] == {"text": ["2+4+6"]}  # our Double ran once per item
    info = loaded.registry.object_info()
    assert info["DynItems"]["output_is_list"] == [True]
    assert info["DynTotal"]["is_input_list"] is True and info["DynTotal"]["output_is_list"] == [False]
    assert info["DynRepeat"]["output_is_list"] == [False, False]
    assert info["DynSwitch"]["input"]["required"]["a"] == ["STRING", {"forceInput": True, "lazy": True}]
