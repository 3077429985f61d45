"""``--worker-files send``: workers write into scratch folders of their own, and the files of
each run come back with its result and are served by the server's ``/api/view``."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import pytest

from cluster.files import OWNER_FILE, FilePart, FilesTooLarge, Landing, file_parts, link_unique, scratch_folder
from cluster.local import LocalWorkers
from cluster.worker import WorkerSetup
from engine.settings import Settings
from tests.cluster.pack import held_document, make_registry
from tests.web.helpers import wait_for_history
from web.app import create_app


def _parts(folder: Path, chunk: int, limit: int = 1 << 20) -> list[FilePart]:
    return list(file_parts(folder, limit=limit, chunk=chunk))


def test_files_travel_in_chunks_and_land_under_free_names(tmp_path: Path) -> None:
    run = scratch_folder(tmp_path / "scratch", "prompt-1")
    payload = os.urandom(10_000)
    (run / "output" / "sub").mkdir()
    (run / "output" / "sub" / "cat_00001_.png").write_bytes(payload)
    (run / "output" / "cat_00001_.png").write_bytes(b"first")
    (run / "output" / "notes.txt").write_bytes(b"")  # an empty file still arrives
    (run / "temp" / "preview_00001_.png").write_bytes(b"preview")
    (run / "output" / ".cat_00002_.png.0123.tmp").write_bytes(b"half")  # a writer's temporary: not sent
    parts = _parts(run, chunk=4096)
    assert [(p.kind, p.name, p.offset) for p in parts if p.name == "sub/cat_00001_.png"] == [
        ("output", "sub/cat_00001_.png", 0), ("output", "sub/cat_00001_.png", 4096),
        ("output", "sub/cat_00001_.png", 8192)]
    assert {p.name for p in parts} == {"cat_00001_.png", "sub/cat_00001_.png", "notes.txt", "preview_00001_.png"}

    server = Settings.for_root(tmp_path / "server")
    (server.output_dir / "sub").mkdir(parents=True)
    (server.output_dir / "sub" / "cat_00001_.png").write_bytes(b"kept")  # taken: never overwritten
    (server.output_dir / "cat_00004_.png").write_bytes(b"kept too")
    (server.output_dir / "notes.txt").write_bytes(b"old notes")
    landing = Landing.for_settings(server)
    for part in parts:
        landing.add(part)
    assert (server.output_dir / "sub" / "cat_00001_.png").read_bytes() == b"kept"
    assert (server.output_dir / "sub" / "cat_00002_.png").read_bytes() == payload
    assert (server.output_dir / "cat_00005_.png").read_bytes() == b"first"  # the server's next number
    assert (server.output_dir / "notes_2.txt").read_bytes() == b""
    assert (server.root / "temp" / "preview_00001_.png").read_bytes() == b"preview"
    assert not [p for p in server.output_dir.rglob("*.tmp")]
    outputs = {"9": {"images": [{"filename": "cat_00001_.png", "subfolder": "sub", "type": "output",
                                 "path": "/worker/sub/cat_00001_.png"},
                                {"filename": "preview_00001_.png", "subfolder": "", "type": "temp"}],
                     "text": ["cat_00001_.png"]}}
    assert landing.rewrite(outputs) == {"9": {"images": [
        {"filename": "cat_00002_.png", "subfolder": "sub", "type": "output",
         "path": str(server.output_dir / "sub" / "cat_00002_.png")},
        {"filename": "preview_00001_.png", "subfolder": "", "type": "temp"}], "text": ["cat_00001_.png"]}}


def test_too_many_bytes_is_a_clear_error_and_bad_names_are_refused(tmp_path: Path) -> None:
    run = scratch_folder(tmp_path / "scratch", "prompt-2")
    (run / "output" / "big_00001_.png").write_bytes(b"x" * 3000)
    (run / "output" / "small_00001_.png").write_bytes(b"x" * 100)
    with pytest.raises(FilesTooLarge, match=r"2 files, the largest output/big_00001_.png.*--worker-files shared"):
        _parts(run, chunk=1024, limit=2048)
    landing = Landing.for_settings(Settings.for_root(tmp_path / "server"))
    for name in ("../escape.png", "/etc/passwd", "a/../../b.png"):
        with pytest.raises(ValueError, match="cannot be placed"):
            landing.add(FilePart("output", name, 0, b"x", 1))
    with pytest.raises(ValueError, match="cannot be placed"):
        landing.add(FilePart("models", "x.safetensors", 0, b"x", 1))
    half = FilePart("output", "half_00001_.png", 0, b"x" * 10, 20)
    landing.add(half)
    landing.abort()  # the run failed midway: nothing half-written stays
    assert list((tmp_path / "server" / "output").iterdir()) == []


def test_racing_writers_of_one_name_get_distinct_numbers(tmp_path: Path) -> None:
    import threading

    sources = []
    for index in range(8):
        source = tmp_path / f"source-{index}"
        source.write_bytes(str(index).encode())
        sources.append(source)
    landed: list[Path] = []
    barrier = threading.Barrier(8)

    def land(source: Path) -> None:
        barrier.wait()
        landed.append(link_unique(source, tmp_path / "out" / "same_00001_.png"))

    (tmp_path / "out").mkdir()
    threads = [threading.Thread(target=land, args=(source,)) for source in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in landed) == [f"same_{n:05d}_.png" for n in range(1, 9)]
    assert sorted(p.read_bytes() for p in landed) == [str(i).encode() for i in range(8)]


@pytest.mark.asyncio
async def test_two_worker_processes_send_their_files_and_the_server_serves_them(tmp_path: Path, aiohttp_client):
    from PIL import Image

    server = Settings.for_root(tmp_path / "server")
    worker = Settings.for_root(tmp_path / "worker")  # another machine's folders, as far as the workers know
    scratch = tmp_path / "scratch"
    server.output_dir.mkdir(parents=True)
    (server.output_dir / "same_00001.png").write_bytes(b"an older file")
    setup = WorkerSetup(make_registry, worker, files="send", scratch=scratch)
    backend = LocalWorkers(setup, 2, server_settings=server)
    client = await aiohttp_client(create_app(make_registry(settings=server), server, backend=backend))
    await asyncio.get_running_loop().run_in_executor(None, backend.wait_ready, 60.0)
    assert backend.status() == {"state": "ready", "ready": ["process-1", "process-2"], "starting": [], "errors": []}
    ids = []
    for seed in (1, 2, 3, 4, 1, 2):  # both workers save "same_00001.png" in their scratch, at the same time;
        # the repeated prompts are answered from a worker's cache, or run again: either way they name a file
        # of the server that holds their image (never the worker's name, same_00001.png, the older file here)
        response = await client.post("/api/prompt", json={"prompt": held_document(seed, seconds=0.4, prefix="same")})
        ids.append((seed, (await response.json())["prompt_id"]))
        if len(ids) == 4:
            for _, prompt_id in ids:
                await wait_for_history(client, prompt_id, timeout=60)
    names, workers = set(), set()
    for seed, prompt_id in ids:
        entry = await wait_for_history(client, prompt_id, timeout=60)
        assert entry["status"]["status_str"] == "success"
        workers.add(entry["latentflow"]["worker"])
        image = entry["outputs"]["7"]["images"][0]
        assert "path" not in image
        names.add(image["filename"])
        view = await client.get("/api/view", params={"filename": image["filename"], "type": "output"})
        assert view.status == 200
        picture = Image.open(io.BytesIO(await view.read()))
        assert picture.getpixel((0, 0))[:3] == (seed % 256, 128, 255 - seed % 256)  # this prompt's own image
    assert workers == {"process-1", "process-2"}
    assert {f"same_{n:05d}.png" for n in range(2, 6)} <= names and "same_00001.png" not in names
    assert (server.output_dir / "same_00001.png").read_bytes() == b"an older file"
    assert not worker.output_dir.exists()  # nothing was written where the workers' settings point
    left = [p for p in scratch.rglob("*") if p.is_file() and p.name != OWNER_FILE]
    assert left and all(p.stat().st_size == 0 for p in left)  # sent: only placeholders keep the names


@pytest.mark.asyncio
async def test_temp_files_of_comfyui_packs_travel_back_and_are_served_as_temp(tmp_path: Path, aiohttp_client):
    """A pack's PreviewImage (a subclass of ComfyUI's) and a file a pack writes under
    ``folder_paths.get_temp_directory()`` land in the server's temp/ folder (``/api/view?type=temp``),
    its ``get_output_directory()`` file in the server's output/, none where the worker's settings point."""
    from PIL import Image

    from tests.cluster.pack import make_pack_registry, preview_document, write_preview_pack

    server = Settings.for_root(tmp_path / "server")
    worker = Settings.for_root(tmp_path / "worker")
    custom_nodes = write_preview_pack(tmp_path / "custom_nodes")
    (server.root / "temp").mkdir(parents=True)
    (server.root / "temp" / "older.png").write_bytes(b"an older preview")
    setup = WorkerSetup(make_pack_registry, worker, custom_nodes=custom_nodes, files="send",
                        scratch=tmp_path / "scratch")
    backend = LocalWorkers(setup, 1, server_settings=server)
    registry = make_pack_registry(custom_nodes, settings=server)
    assert not registry.failures, registry.failures
    import folder_paths  # the shim, on sys.path once a pack is loaded

    assert folder_paths.temp_directory == folder_paths.get_temp_directory() == str(server.root / "temp")
    assert folder_paths.get_output_directory() == str(server.output_dir)  # outside a run: the installation's
    client = await aiohttp_client(create_app(registry, server, backend=backend))
    await asyncio.get_running_loop().run_in_executor(None, backend.wait_ready, 60.0)
    seen = []
    for shade, text in ((40, "first"), (200, "second")):
        response = await client.post("/api/prompt", json={"prompt": preview_document(shade, text)})
        body = await response.json()
        assert response.status == 200, body
        entry = await wait_for_history(client, body["prompt_id"], timeout=60)
        assert entry["status"]["status_str"] == "success", entry["status"]
        (image,) = entry["outputs"]["2"]["images"]
        assert image["type"] == "temp" and image["filename"].startswith("ComfyUI_temp_")
        view = await client.get("/api/view", params={"filename": image["filename"], "type": "temp"})
        assert view.status == 200
        assert Image.open(io.BytesIO(await view.read())).getpixel((0, 0)) == (shade, 128, 255 - shade)
        (note,) = entry["outputs"]["3"]["notes"]
        view = await client.get("/api/view", params={"filename": note["filename"], "subfolder": "notes",
                                                     "type": "temp"})
        assert view.status == 200 and await view.text() == text
        seen.append((image["filename"], note["filename"]))
    # The second run's note.txt took the server's next free name; the first one's is kept.
    assert [note for _, note in seen] == ["note.txt", "note_2.txt"]
    assert [name[-11:] for name, _ in seen] == ["_00001_.png", "_00002_.png"]  # one node: one prefix, numbered
    assert len({name[:-11] for name, _ in seen}) == 1
    assert (server.root / "temp" / "notes" / "note.txt").read_text() == "first"
    assert (server.root / "temp" / "older.png").read_bytes() == b"an older preview"
    assert sorted(p.name for p in server.output_dir.iterdir()) == ["kept.txt", "kept_2.txt"]
    assert (server.output_dir / "kept_2.txt").read_text() == "SECOND"
    assert not (worker.root / "temp").exists() and not worker.output_dir.exists()


def _save_many(folder: str, start_at: float, count: int, shade: int) -> list[str]:
    """One 'worker' of the shared-storage race: SaveImage's writer, same prefix as the other."""
    from PIL import Image

    from nodes.images import write_png_atomically

    while time.time() < start_at:
        time.sleep(0.001)
    return [write_png_atomically(Path(folder), "same", Image.new("RGB", (8, 8), (shade, index, 0)), {}).name
            for index in range(count)]


def test_shared_storage_two_processes_saving_one_prefix_never_collide(tmp_path: Path) -> None:
    """``--worker-files shared``: SaveImage in two processes, same prefix, same moment."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from PIL import Image

    start_at = time.time() + 1.5  # both spawned processes are up by then
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(_save_many, str(tmp_path), start_at, 6, shade) for shade in (10, 200)]
        names = [job.result(timeout=60) for job in jobs]
    assert sorted(names[0] + names[1]) == [f"same_{n:05d}_.png" for n in range(1, 13)]
    for shade, written in zip((10, 200), names):
        for index, name in enumerate(written):  # each file holds what its writer wrote
            assert Image.open(tmp_path / name).getpixel((0, 0)) == (shade, index, 0)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_run_answered_from_the_workers_cache_names_the_servers_file(tmp_path: Path) -> None:
    """The worker's cache keeps the UI of the run that wrote the file (the worker's name for
    it); the server's memory of that worker maps it to the name the file got there."""
    import threading

    from cluster.worker import WorkerRuntime
    from engine.validation import validate_document

    server = Settings.for_root(tmp_path / "server")
    worker = Settings.for_root(tmp_path / "worker")
    runtime = WorkerRuntime(WorkerSetup(make_registry, worker, files="send", scratch=tmp_path / "scratch"), "w1")
    known: dict = {}
    document = held_document(7, seconds=0.0, prefix="same")
    workflow = validate_document(document, make_registry(settings=worker)).workflow
    served = []
    server.output_dir.mkdir(parents=True)
    (server.output_dir / "same_00001.png").touch()  # an older file of the worker's name
    for attempt in range(3):
        landing = Landing.for_settings(server, known=known)
        result = runtime.run(f"p{attempt}", workflow, {"workflow_document": document}, lambda event: None,
                             threading.Event(), landing.add)
        assert result.status == "success"
        served.append((tuple(result.cached), landing.rewrite(result.outputs)["7"]["images"][0]["filename"]))
    assert "7" not in served[0][0] and "7" in served[1][0] and "7" in served[2][0]  # later runs: cached
    assert [name for _, name in served] == ["same_00002.png"] * 3  # the worker called it same_00001.png
    assert (server.output_dir / "same_00001.png").read_bytes() == b""  # the older file, untouched
    assert (server.output_dir / "same_00002.png").read_bytes().startswith(b"\x89PNG")


def test_serve_s_option_reaches_the_backend(tmp_path) -> None:
    import main
    from engine.settings import Settings

    settings = Settings.for_root(tmp_path)
    assert main.build_backend(settings, None, workers=2, worker_files="send").setup.files == "send"
    assert main.build_backend(settings, None, workers=2).setup.files == "shared"  # local processes share a disk
    with pytest.raises(ValueError, match="--worker-files must be one of"):
        main.build_backend(settings, None, workers=2, worker_files="ftp")
