"""Model folders as ComfyUI lays them out: several folders per kind, extra_model_paths.yaml,
names confined to their folders, and a missing model that says where to put it."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.api import node
from engine.model_paths import ModelPaths, ModelPathsError, model_choice, read_extra_model_paths
from engine.registry import NodeRegistry
from engine.settings import Settings
from engine.validation import validate_document


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- default layout


def test_default_layout_has_comfyuis_kinds_and_legacy_names(tmp_path: Path) -> None:
    paths = ModelPaths.build(tmp_path / "models")
    for kind in ("checkpoints", "vae", "loras", "embeddings", "controlnet", "upscale_models", "clip_vision",
                 "diffusion_models", "text_encoders", "hypernetworks", "gligen", "vae_approx",
                 "style_models", "photomaker", "configs"):
        assert kind in paths.kinds(), kind
    models = tmp_path / "models"
    assert [f.path for f in paths.folders("diffusion_models")] == [models / "unet", models / "diffusion_models"]
    assert paths.folders("unet") == paths.folders("diffusion_models")
    assert [f.path for f in paths.folders("clip")] == [models / "text_encoders", models / "clip"]
    assert paths.folders("no_such_kind") == ()
    assert paths.extensions("configs") == (".yaml",)


def test_a_kind_lists_files_from_all_its_folders_with_subfolder_names(tmp_path: Path) -> None:
    models = tmp_path / "models"
    touch(models / "unet" / "a.safetensors")
    touch(models / "diffusion_models" / "sdxl" / "b.safetensors")
    touch(models / "diffusion_models" / "a.safetensors")  # same name in the second folder: listed once
    touch(models / "unet" / "notes.txt")  # not a model file
    touch(models / "unet" / ".hidden.safetensors")
    touch(models / "configs" / "v1-inference.yaml")
    paths = ModelPaths.build(models)
    assert paths.files("diffusion_models") == ["a.safetensors", "sdxl/b.safetensors"]
    assert paths.files("unet") == paths.files("diffusion_models")
    assert paths.files("configs") == ["v1-inference.yaml"]
    # the first folder in search order wins
    assert paths.resolve("diffusion_models", "a.safetensors") == models / "unet" / "a.safetensors"
    assert paths.resolve("unet", "sdxl/b.safetensors") == models / "diffusion_models" / "sdxl" / "b.safetensors"
    assert paths.resolve(("checkpoints", "diffusion_models"), "a.safetensors") == models / "unet" / "a.safetensors"
    assert paths.resolve("checkpoints", "a.safetensors") is None
    catalogue = paths.catalogue()
    assert catalogue["diffusion_models"] == ["a.safetensors", "sdxl/b.safetensors"]
    assert catalogue["checkpoints"] == [] and list(catalogue) == paths.kinds()


def test_names_are_confined_but_symlinked_files_and_folders_are_used(tmp_path: Path) -> None:
    models = tmp_path / "models"
    folder = models / "checkpoints"
    touch(folder / "sub" / "in.safetensors")
    secret = touch(tmp_path / "secret.safetensors")  # next to models/: reachable only by ../
    touch(models / "vae" / "v.safetensors")
    paths = ModelPaths.build(models)
    for escape in ("../../secret.safetensors", "sub/../../../secret.safetensors", str(secret),
                   "../vae/v.safetensors", "sub\\in.safetensors", "", ".", "C:/x.safetensors"):
        assert paths.resolve("checkpoints", escape) is None, escape
    assert paths.resolve("checkpoints", "./sub/in.safetensors") == folder / "sub" / "in.safetensors"
    message = paths.not_found_message("checkpoints", "../../secret.safetensors")
    assert "not allowed" in message and "'..'" in message

    shared = tmp_path / "shared"
    touch(shared / "big.safetensors")
    touch(shared / "more" / "deep.safetensors")
    (folder / "big.safetensors").symlink_to(shared / "big.safetensors")
    (folder / "linked").symlink_to(shared / "more", target_is_directory=True)
    (folder / "dangling.safetensors").symlink_to(tmp_path / "gone.safetensors")
    assert paths.files("checkpoints") == ["big.safetensors", "linked/deep.safetensors", "sub/in.safetensors"]
    assert paths.resolve("checkpoints", "big.safetensors") == folder / "big.safetensors"
    assert paths.resolve("checkpoints", "linked/deep.safetensors").read_bytes() == b"x"
    assert paths.resolve("checkpoints", "dangling.safetensors") is None


def test_a_symlink_loop_is_listed_once(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "loras"
    touch(folder / "a.safetensors")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    assert ModelPaths.build(tmp_path / "models").files("loras") == ["a.safetensors"]


# --------------------------------------------------------------------------- extra_model_paths.yaml

COMFYUI_CONFIG = """\
#config for comfyui
comfyui:
     base_path: ../ComfyUI/
     is_default: true
     checkpoints: models/checkpoints/
     clip: models/clip/
     diffusion_models: |
                  models/diffusion_models
                  models/unet
     loras: models/loras/
     embeddings: models/embeddings/

#other_ui:
#    base_path: path/to/ui
"""

A111_CONFIG = """\
a111:
    base_path: {base}

    checkpoints: models/Stable-diffusion
    configs: models/Stable-diffusion
    vae: models/VAE
    loras: |
         models/Lora
         models/LyCORIS
    upscale_models: |
                  models/ESRGAN
                  models/RealESRGAN
                  models/SwinIR
    embeddings: embeddings
    hypernetworks: models/hypernetworks
    controlnet: models/ControlNet
"""


def test_comfyui_style_config_with_relative_base_path_is_default_and_legacy_keys(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "latentflow" / "extra_model_paths.yaml", COMFYUI_CONFIG)
    comfy = tmp_path / "ComfyUI" / "models"  # base_path is relative to the YAML file's folder
    folders = read_extra_model_paths(config)
    assert [(f.kind, f.path) for f in folders] == [
        ("checkpoints", comfy / "checkpoints"),
        ("text_encoders", comfy / "clip"),  # 'clip' is ComfyUI's older name of text_encoders
        ("diffusion_models", comfy / "diffusion_models"),
        ("diffusion_models", comfy / "unet"),
        ("loras", comfy / "loras"),
        ("embeddings", comfy / "embeddings"),
    ]
    assert all(f.is_default and f.source == "extra_model_paths.yaml [comfyui]" for f in folders)

    ours = tmp_path / "latentflow" / "models"
    touch(ours / "checkpoints" / "tiny.safetensors")
    touch(comfy / "checkpoints" / "sd15" / "v1-5.safetensors")
    touch(comfy / "checkpoints" / "tiny.safetensors", b"comfy")
    touch(comfy / "clip" / "clip_l.safetensors")
    paths = ModelPaths.build(ours, [config])
    assert paths.files("checkpoints") == ["sd15/v1-5.safetensors", "tiny.safetensors"]
    # is_default: the ComfyUI folder is searched before our own
    assert paths.resolve("checkpoints", "tiny.safetensors").read_bytes() == b"comfy"
    assert paths.files("text_encoders") == ["clip_l.safetensors"]
    assert [f.path for f in paths.folders("checkpoints")] == [comfy / "checkpoints", ours / "checkpoints"]


def test_a111_style_config_maps_its_folders_after_ours(tmp_path: Path) -> None:
    webui = tmp_path / "stable-diffusion-webui"
    config = write_yaml(tmp_path / "conf" / "a111.yaml", A111_CONFIG.format(base=webui))
    touch(webui / "models" / "Stable-diffusion" / "realistic.safetensors")
    touch(webui / "models" / "Stable-diffusion" / "realistic.yaml")
    touch(webui / "models" / "Lora" / "style.safetensors")
    touch(webui / "models" / "LyCORIS" / "loha.safetensors")
    touch(webui / "models" / "ESRGAN" / "4x.pth")
    touch(webui / "embeddings" / "bad-hands.pt")
    ours = tmp_path / "models"
    touch(ours / "loras" / "mine.safetensors")
    touch(ours / "checkpoints" / "realistic.safetensors", b"ours")

    paths = ModelPaths.build(ours, [config])
    assert paths.files("checkpoints") == ["realistic.safetensors"]
    assert paths.resolve("checkpoints", "realistic.safetensors").read_bytes() == b"ours"  # not is_default
    assert paths.files("configs") == ["realistic.yaml"]
    assert paths.files("loras") == ["loha.safetensors", "mine.safetensors", "style.safetensors"]
    assert paths.resolve("loras", "loha.safetensors") == webui / "models" / "LyCORIS" / "loha.safetensors"
    assert [f.path for f in paths.folders("upscale_models")][1:] == [
        webui / "models" / n for n in ("ESRGAN", "RealESRGAN", "SwinIR")]
    assert paths.files("upscale_models") == ["4x.pth"]
    assert paths.files("embeddings") == ["bad-hands.pt"]
    assert [f.path for f in paths.folders("controlnet")][-1] == webui / "models" / "ControlNet"
    assert [f.path for f in paths.folders("hypernetworks")][-1] == webui / "models" / "hypernetworks"

    message = paths.not_found_message("checkpoints", "sd15.safetensors")
    assert message.startswith("checkpoint 'sd15.safetensors' not found: put it in ")
    assert f"{ours / 'checkpoints'}/" in message
    assert f"{webui / 'models' / 'Stable-diffusion'}/ (a111.yaml [a111])" in message
    assert message.endswith("available: 'realistic.safetensors'")


def test_config_paths_without_base_path_lists_home_and_environment_variables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELS_DISK", str(tmp_path / "disk"))
    config = write_yaml(tmp_path / "cfg" / "extra.yaml", """\
mine:
  checkpoints: local/ckpts
  vae: ~/vae
  loras:
    - $MODELS_DISK/loras
    - /abs/loras
  ipadapter: local/ipadapter
empty:
""")
    folders = {(f.kind, f.path) for f in read_extra_model_paths(config)}
    assert folders == {
        ("checkpoints", tmp_path / "cfg" / "local" / "ckpts"),
        ("vae", tmp_path / "home" / "vae"),
        ("loras", tmp_path / "disk" / "loras"),
        ("loras", Path("/abs/loras")),
        ("ipadapter", tmp_path / "cfg" / "local" / "ipadapter"),  # a custom node pack's kind is kept
    }
    paths = ModelPaths.build(tmp_path / "models", [config])
    assert paths.kinds()[-1] == "ipadapter"
    assert [f.path for f in paths.folders("ipadapter")] == [tmp_path / "cfg" / "local" / "ipadapter"]


def test_the_shipped_example_config_reads_as_the_a111_layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    example = Path(__file__).resolve().parents[2] / "extra_model_paths.yaml.example"
    folders = read_extra_model_paths(example)
    webui = tmp_path / "stable-diffusion-webui"
    assert ("loras", webui / "models" / "LyCORIS") in [(f.kind, f.path) for f in folders]
    assert {f.source for f in folders} == {"extra_model_paths.yaml.example [a111]"}  # comfyui: commented out
    paths = ModelPaths.build(tmp_path / "models", [example])
    assert paths.has_kind("unet") and paths.has_kind("checkpoints") and not paths.has_kind("nothing")
    assert [f.path for f in paths.folders("checkpoints")] == [tmp_path / "models" / "checkpoints",
                                                              webui / "models" / "Stable-diffusion"]


def test_an_empty_or_commented_out_config_adds_nothing(tmp_path: Path) -> None:
    assert read_extra_model_paths(write_yaml(tmp_path / "a.yaml", "")) == []
    assert read_extra_model_paths(write_yaml(tmp_path / "b.yaml", "#comfyui:\n#  checkpoints: x\n")) == []


@pytest.mark.parametrize("text, expected", [
    ("a111:\n  checkpoints: [models\n", ["bad.yaml", "not valid YAML at line"]),
    ("a111:\n\tcheckpoints: models\n", ["bad.yaml", "not valid YAML", "indent"]),
    ("- checkpoints: models\n", ["bad.yaml", "expected sections", "list"]),
    ("a111: models/Stable-diffusion\n", ["bad.yaml [a111]", "section must map kinds", "indent its entries"]),
    ("a111:\n  checkpoints: 5\n", ["bad.yaml [a111] checkpoints", "expected a folder path", "int 5"]),
    ("a111:\n  loras:\n    models: Lora\n", ["bad.yaml [a111] loras", "expected a folder path", "dict"]),
    ("a111:\n  base_path: [a, b]\n  vae: v\n", ["bad.yaml [a111]", "base_path must be a folder path"]),
    ("a111:\n  is_default: maybe\n  vae: v\n", ["bad.yaml [a111]", "is_default must be true or false"]),
    ("a111:\n  3: models\n", ["bad.yaml [a111]", "key 3 is not a model kind"]),
])
def test_bad_config_names_file_section_key_and_fix(tmp_path: Path, text: str, expected: list[str]) -> None:
    config = write_yaml(tmp_path / "bad.yaml", text)
    with pytest.raises(ModelPathsError) as caught:
        ModelPaths.build(tmp_path / "models", [config])
    for part in expected:
        assert part in str(caught.value), (part, str(caught.value))


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelPathsError, match="nope.yaml: cannot read extra model paths"):
        ModelPaths.build(tmp_path / "models", [tmp_path / "nope.yaml"])


def test_settings_build_model_paths_from_their_folders_and_configs(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "x.yaml", "other:\n  base_path: other\n  checkpoints: ckpt\n")
    touch(tmp_path / "other" / "ckpt" / "o.safetensors")
    touch(tmp_path / "models" / "checkpoints" / "m.safetensors")
    settings = Settings.for_root(tmp_path, extra_model_paths=(config,))
    assert settings.model_paths.files("checkpoints") == ["m.safetensors", "o.safetensors"]
    assert settings.model_paths is settings.model_paths  # read once per Settings
    assert Settings.for_root(tmp_path).model_paths.files("checkpoints") == ["m.safetensors"]


# --------------------------------------------------------------------------- the missing-model message


def test_missing_model_names_kind_folders_and_keeps_did_you_mean(tmp_path: Path) -> None:
    models = tmp_path / "models"
    touch(models / "checkpoints" / "tiny-shapes.safetensors")
    paths = ModelPaths.build(models)

    @node("Loader", category="test")
    def loader(ckpt_name: model_choice(paths, "checkpoints", tooltip="a checkpoint")) -> "INT":
        return 1

    @node("Out", category="test", output=True)
    def out(value: "INT") -> None:
        return None

    registry = NodeRegistry()
    registry.register_pack([loader, out], "test")
    assert registry.object_info()["Loader"]["input"]["required"]["ckpt_name"][0] == ["tiny-shapes.safetensors"]

    def problem_for(name: str):
        document = {"version": 1, "nodes": {"1": {"type": "Loader", "inputs": {"ckpt_name": name}},
                                             "2": {"type": "Out", "inputs": {"value": ["1", 0]}}}}
        (problem,) = validate_document(document, registry).errors
        return problem

    close = problem_for("tiny-shape.safetensors")
    assert close.input == "ckpt_name"
    assert close.message == (f"checkpoint 'tiny-shape.safetensors' not found: put it in {models / 'checkpoints'}/ "
                             "(or add your own folder under 'checkpoints:' in extra_model_paths.yaml); "
                             "available: 'tiny-shapes.safetensors'")
    assert close.hint == "did you mean 'tiny-shapes.safetensors'?"
    far = problem_for("sd_xl_base_1.0.safetensors")
    assert far.message.startswith("checkpoint 'sd_xl_base_1.0.safetensors' not found: put it in ")
    assert far.message.endswith("available: 'tiny-shapes.safetensors'")
    assert validate_document({"version": 1, "nodes": {
        "1": {"type": "Loader", "inputs": {"ckpt_name": "tiny-shapes.safetensors"}},
        "2": {"type": "Out", "inputs": {"value": ["1", 0]}}}}, registry).ok


def test_missing_model_message_for_a_kind_with_two_folders_and_none_available(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = ModelPaths.build(Path("models"))
    assert paths.not_found_message(("unet",), "flux.safetensors") == (
        "diffusion model 'flux.safetensors' not found: put it in models/unet/ or models/diffusion_models/ "
        "(or add your own folder under 'diffusion_models:' in extra_model_paths.yaml); available: none")
    many = ModelPaths.build(tmp_path / "m")
    for index in range(10):
        touch(tmp_path / "m" / "loras" / f"l{index}.safetensors")
    assert many.not_found_message("loras", "x.safetensors").endswith("'l7.safetensors' and 2 more")


# --------------------------------------------------------------------------- CLI folder options


@pytest.fixture()
def captured_settings(monkeypatch: pytest.MonkeyPatch) -> list:
    """``main.main`` with a registry factory that records the settings and plugin folder it gets."""
    import main
    from tests.engine.graph_nodes import make_registry

    seen: list = []

    def build_registry(custom_nodes=None, entry_points=True, settings=None):
        seen.append((settings, custom_nodes))
        return make_registry()[0]

    monkeypatch.setattr(main, "build_registry", build_registry)
    return seen


def test_base_directory_moves_every_folder_but_the_shipped_workflows(tmp_path: Path, captured_settings: list) -> None:
    import main

    base = tmp_path / "base"
    assert main.main(["--base-directory", str(base), "nodes"]) == 0
    assert main.main(["nodes", "--base-directory", str(base)]) == 0  # after the command too
    for settings, custom_nodes in captured_settings:
        assert settings.root == base and settings.models_dir == base / "models"
        assert (settings.input_dir, settings.output_dir) == (base / "input", base / "output")
        assert custom_nodes == base / "custom_nodes"
        assert settings.workflows_dir == main.ROOT / "workflows"
        assert [f.path for f in settings.model_paths.folders("checkpoints")] == [base / "models" / "checkpoints"]


def test_input_and_output_directories_and_the_older_output_dir(tmp_path: Path, captured_settings: list) -> None:
    import main

    workflow = tmp_path / "w.json"
    workflow.write_text('{"version": 1, "nodes": {"1": {"type": "Const", "inputs": {"value": 2}}, '
                        '"2": {"type": "Output", "inputs": {"value": ["1", 0]}}}}')
    assert main.main(["--input-directory", str(tmp_path / "in"), "validate", str(workflow),
                      "--output-directory", str(tmp_path / "out")]) == 0
    assert main.main(["--output-directory", str(tmp_path / "out"), "run", str(workflow), "--quiet",
                      "--output-dir", str(tmp_path / "older")]) == 0  # the subcommand's own option wins
    (validate_settings, _), (run_settings, _) = captured_settings
    assert validate_settings.input_dir == tmp_path / "in" and validate_settings.output_dir == tmp_path / "out"
    assert validate_settings.root == main.ROOT
    assert run_settings.output_dir == tmp_path / "older" and run_settings.input_dir == main.ROOT / "input"


def test_extra_model_paths_configs_before_and_after_the_command_all_count(
        tmp_path: Path, captured_settings: list, capsys: pytest.CaptureFixture[str]) -> None:
    import main

    first = write_yaml(tmp_path / "one.yaml", "one:\n  checkpoints: c1\n")
    second = write_yaml(tmp_path / "two.yaml", "two:\n  checkpoints: c2\n")
    assert main.main(["--extra-model-paths-config", str(first), "nodes",
                      "--extra-model-paths-config", str(second)]) == 0
    ((settings, _),) = captured_settings
    assert settings.extra_model_paths[-2:] == (first, second)
    assert [f.path for f in settings.model_paths.folders("checkpoints")][-2:] == [tmp_path / "c1", tmp_path / "c2"]

    bad = write_yaml(tmp_path / "bad.yaml", "a111:\n  vae: 1.5\n")
    with pytest.raises(SystemExit) as stopped:
        main.main(["nodes", "--extra-model-paths-config", str(bad)])
    assert str(stopped.value).startswith(f"error: {bad} [a111] vae: expected a folder path")
