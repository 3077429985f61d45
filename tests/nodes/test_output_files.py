"""Where and how SaveImage writes: never through a symbolic link out of output/, and a failed
write (a full disk) fails the run with a message naming the file, leaving nothing behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from PIL import Image

import main
from engine.scheduler import Executor
from engine.workflow import document_to_workflow as parse_workflow
from nodes.images import OutputWriteError, save_images


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """An output folder holding ``linkdir``, a symbolic link to a folder outside it."""
    output, outside = tmp_path / "output", tmp_path / "elsewhere"
    output.mkdir()
    outside.mkdir()
    (output / "linkdir").symlink_to(outside, target_is_directory=True)
    return output, outside


def image(batch: int = 1) -> torch.Tensor:
    return torch.full((batch, 8, 8, 3), 0.5)  # (B, H, W, 3)


@pytest.mark.parametrize("prefix", ["linkdir/name", "linkdir/deeper/name"])
def test_a_symlinked_subfolder_leading_outside_is_refused(folders: tuple[Path, Path], prefix: str) -> None:
    output, outside = folders
    with pytest.raises(ValueError) as refused:
        save_images(image(), output, prefix, "output", None, "SaveImage")
    message = str(refused.value)
    assert "leads outside" in message and "symbolic link" in message and str(outside) in message
    assert list(outside.rglob("*")) == []  # nothing written (nor created) outside


def test_real_subfolders_and_links_that_stay_inside_still_work(folders: tuple[Path, Path]) -> None:
    output, _ = folders
    (output / "real").mkdir()
    (output / "alias").symlink_to(output / "real", target_is_directory=True)  # inside: fine
    first = save_images(image(), output, "real/sub/name", "output", None, "SaveImage")
    second = save_images(image(), output, "alias/name", "output", None, "SaveImage")
    assert first.ui["images"][0]["subfolder"] == "real/sub"
    assert (output / "real" / "sub" / "name_00001_.png").is_file()
    assert (output / "real" / "name_00001_.png").is_file() and second.ui["images"][0]["filename"] == "name_00001_.png"


def test_an_output_folder_that_is_itself_a_link_is_fine(tmp_path: Path) -> None:
    disk = tmp_path / "big-disk"
    disk.mkdir()
    (tmp_path / "output").symlink_to(disk, target_is_directory=True)
    save_images(image(), tmp_path / "output", "sub/name", "output", None, "SaveImage")
    assert (disk / "sub" / "name_00001_.png").is_file()


def full_disk_after(limit: int):
    """A PNG writer that writes ``limit`` bytes, then fails as a full disk does."""
    def save(self: Image.Image, fp, *args, **kwargs) -> None:
        fp.write(b"\x89PNG\r\n\x1a\n" + b"\0" * (limit - 8))
        raise OSError(errno.ENOSPC, "No space left on device")
    return save


def test_a_full_disk_fails_with_a_clear_message_and_leaves_no_file(folders, monkeypatch) -> None:
    output, _ = folders
    (output / "shot_00003_.png").write_bytes(b"an earlier image")
    monkeypatch.setattr(Image.Image, "save", full_disk_after(4096))
    with pytest.raises(OutputWriteError) as failed:
        save_images(image(), output, "shot", "output", None, "SaveImage")
    message = str(failed.value)
    assert message.startswith("SaveImage: no space left on device while writing ")
    assert str(output / "shot_00004_.png") in message  # the file it was about to write
    assert "free space or choose another folder with --output-directory" in message
    assert isinstance(failed.value.__cause__, OSError) and failed.value.__cause__.errno == errno.ENOSPC
    assert sorted(p.name for p in output.iterdir()) == ["linkdir", "shot_00003_.png"]  # no .tmp, no partial png


def test_other_write_errors_name_the_file_and_the_reason(tmp_path: Path, monkeypatch) -> None:
    def refuse(self, fp, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Image.Image, "save", refuse)
    with pytest.raises(OutputWriteError, match=r"PreviewImage: could not write .*preview_00001_\.png: "
                                               r"Permission denied \(EACCES\)"):
        save_images(image(), tmp_path, "preview", "temp", None, "PreviewImage")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_fails_the_run_of_the_real_save_node(tmp_path: Path, monkeypatch) -> None:
    """LoadInputImage -> SaveImage through the real registry and executor: the run fails at
    SaveImage with the message, later runs work again once there is space."""
    settings = main.build_settings(main.FolderOptions(base_directory=tmp_path))
    registry = main.build_registry(custom_nodes=None, entry_points=False, settings=settings)
    settings.input_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(settings.input_dir / "red.png")
    workflow = parse_workflow({"version": 1, "nodes": {
        "1": {"type": "LoadInputImage", "inputs": {"image": "red.png"}},
        "2": {"type": "SaveImage", "inputs": {"images": ["1", "image"], "filename_prefix": "run/out"}}}})
    executor = Executor(registry, services={"settings": settings})
    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", full_disk_after(100))
    failed = executor.run(workflow)
    assert failed.status == "failed" and failed.failure is not None and failed.failure.node_id == "2"
    assert "no space left on device while writing" in failed.failure.message
    assert str(settings.output_dir / "run" / "out_00001_.png") in failed.failure.message
    assert list((settings.output_dir / "run").iterdir()) == []
    monkeypatch.setattr(Image.Image, "save", real_save)
    done = executor.run(workflow)
    assert done.status == "success"
    with Image.open(settings.output_dir / "run" / "out_00001_.png") as saved:
        assert saved.getpixel((0, 0)) == (200, 10, 10)


def test_the_real_save_node_refuses_a_link_out_of_output(tmp_path: Path) -> None:
    settings = main.build_settings(main.FolderOptions(base_directory=tmp_path))
    registry = main.build_registry(custom_nodes=None, entry_points=False, settings=settings)
    settings.input_dir.mkdir(parents=True, exist_ok=True)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16)).save(settings.input_dir / "in.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    (settings.output_dir / "linkdir").symlink_to(outside, target_is_directory=True)
    workflow = parse_workflow({"version": 1, "nodes": {
        "1": {"type": "LoadInputImage", "inputs": {"image": "in.png"}},
        "2": {"type": "SaveImage", "inputs": {"images": ["1", "image"], "filename_prefix": "linkdir/name"}}}})
    result = Executor(registry, services={"settings": settings}).run(workflow)
    assert result.status == "failed" and result.failure is not None
    assert "leads outside" in result.failure.message and "'linkdir'" in result.failure.message
    assert list(outside.iterdir()) == []
