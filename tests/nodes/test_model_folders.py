"""Model folders end to end: ``main.py run`` with the folders moved by ComfyUI's options, a
model found through extra_model_paths.yaml, and a missing model that names its folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "models" / "checkpoints" / "tiny-shapes.safetensors"
TXT2IMG = ROOT / "workflows" / "txt2img.json"
FAST = ["--set", "5.steps=2", "--quiet"]  # txt2img: node 5 is the SampleLatent, 64x64 already


def test_txt2img_workflow_is_what_the_fast_settings_assume() -> None:
    nodes = json.loads(TXT2IMG.read_text())["nodes"]
    assert nodes["5"]["type"] == "SampleLatent" and nodes["1"]["inputs"]["ckpt_name"] == EMBEDDED.name


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[Path], str]:
    import main

    code = main.main(argv)
    captured = capsys.readouterr()
    return code, [Path(line) for line in captured.out.splitlines() if line.endswith(".png")], captured.err


def test_run_with_base_directory_uses_its_models_and_writes_its_output(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "checkpoints" / EMBEDDED.name).symlink_to(EMBEDDED)
    code, pngs, err = run(["--base-directory", str(base), "run", str(TXT2IMG), *FAST], capsys)
    assert code == 0, err
    assert len(pngs) == 1 and pngs[0].parent == base / "output" and pngs[0].is_file()


def test_run_finds_a_checkpoint_where_an_a111_install_keeps_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    webui = tmp_path / "stable-diffusion-webui"
    (webui / "models" / "Stable-diffusion" / "shapes").mkdir(parents=True)
    (webui / "models" / "Stable-diffusion" / "shapes" / EMBEDDED.name).symlink_to(EMBEDDED)
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"a111:\n    base_path: {webui}\n\n    checkpoints: models/Stable-diffusion\n")
    base = tmp_path / "empty-base"  # nothing in models/: the file comes from the A1111 folder
    out = tmp_path / "out"
    code, pngs, err = run(["--base-directory", str(base), "run", str(TXT2IMG), *FAST,
                           "--set", f"1.ckpt_name=shapes/{EMBEDDED.name}",
                           "--extra-model-paths-config", str(config), "--output-directory", str(out)], capsys)
    assert code == 0, err
    assert len(pngs) == 1 and pngs[0].parent == out


def test_run_without_the_model_names_the_folder_to_put_it_in(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    code, pngs, err = run(["--base-directory", str(base), "run", str(TXT2IMG), *FAST], capsys)
    assert code == 1 and not pngs
    assert (f"checkpoint 'tiny-shapes.safetensors' not found: put it in {base / 'models' / 'checkpoints'}/ "
            f"(or add your own folder under 'checkpoints:' in extra_model_paths.yaml); available: none") in err
    assert not (base / "output").exists()


def test_loader_refuses_a_missing_or_escaping_name_with_the_folder_in_the_message(tmp_path: Path) -> None:
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / EMBEDDED.name).symlink_to(EMBEDDED)
    (tmp_path / "models" / "vae").mkdir()
    (tmp_path / "models" / "vae" / "vae.safetensors").symlink_to(EMBEDDED)
    load = {spec.id: spec.function for spec in build_nodes(Runtime(Settings.for_root(tmp_path), device="cpu"))}
    with pytest.raises(FileNotFoundError) as missing:
        load["LoadCheckpoint"](ckpt_name="sd15.safetensors")
    assert str(missing.value) == (
        f"LoadCheckpoint: ckpt_name: checkpoint 'sd15.safetensors' not found: put it in "
        f"{tmp_path / 'models' / 'checkpoints'}/ (or add your own folder under 'checkpoints:' in "
        f"extra_model_paths.yaml); available: 'tiny-shapes.safetensors'")
    with pytest.raises(FileNotFoundError, match="not allowed"):
        load["LoadCheckpoint"](ckpt_name="../vae/vae.safetensors")
