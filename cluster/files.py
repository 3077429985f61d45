"""Output files of workers that do not share the server's disk (``--worker-files send``).

``shared`` (the default for local worker processes): a worker writes into the server's
output folder itself, which must then be storage every worker sees; SaveImage's numbered
names stay unique across workers because each file is linked into place without
overwriting (``nodes.images.write_png_atomically``).

``send`` (the default for Ray): each worker writes into a scratch folder of its own
(:func:`scratch_folder`, :func:`scratch_services`); after a run every file the run added
or wrote again there (outputs, and temp files such as previews: ours, and those of
ComfyUI packs, whose ``folder_paths`` folders are the run's: ``comfy_packs.files``) travels
back with the result in :class:`FilePart` chunks (:func:`file_parts`) and is emptied on the worker: a zero-byte
placeholder keeps its name taken, so the worker's names stay unique for the worker's
life, as long as its result cache. The server lands the files in its own folders
(:class:`Landing`): under the same relative names, each written to a temporary first and
linked into place, never over an existing file. A numbered name (``prefix_00001_.png``)
takes the server's next free number, as a local SaveImage would have; the run's UI entries
(history, ``/api/view``) are rewritten to the names the files got (:meth:`Landing.rewrite`),
from a memory kept per worker, so a later run that the worker answers from its cache
(the same UI, no new file) names the server's files too.

A scratch folder names its owners in ``owner.json`` (:func:`write_owners`): the processes
(pid, start time, host) whose life it serves. The process that made it removes it when its
worker is gone (a local server, when a worker process dies, even by SIGKILL; the worker
itself at its exit); what a killed server left is removed by the next one
(:func:`remove_stale_scratch`): a folder only when it names owners on this host and none of
them runs any more. A folder without a readable owner file, or of another host, is kept.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Literal, Mapping

log = logging.getLogger(__name__)

WorkerFiles = Literal["send", "shared"]
WORKER_FILES = ("send", "shared")
FILE_KINDS = ("output", "temp")  # the folders a run's files are sent back from
CHUNK_BYTES = 4 << 20  # one message (pipe) or one Ray object per chunk
DEFAULT_LIMIT_BYTES = 1 << 30  # all the files of one run
NUMBERED = re.compile(r"^(?P<stem>.*)_(?P<number>\d{5,})(?P<tail>_?)(?P<suffix>\.[^.]*)?$")
MAX_NUMBER = 10 ** 7
OWNER_FILE = "owner.json"  # in a scratch folder: the processes it belongs to (outside output/ and temp/)


class FilesTooLarge(RuntimeError):
    """A run wrote more than ``--worker-files send`` may carry back."""


@dataclass(frozen=True)
class FilePart:
    """A chunk of one file a run wrote: ``kind`` (output or temp), ``name`` (its path
    relative to that folder, ``/``-separated), ``size`` (the whole file's bytes)."""

    kind: str
    name: str
    offset: int
    data: bytes
    size: int

    @property
    def last(self) -> bool:
        return self.offset + len(self.data) >= self.size


# ---------------------------------------------------------------------- worker side


def scratch_base(scratch: Path | None) -> Path:
    """Where scratch folders are made: ``scratch``, or ``latentflow-worker`` in the system's temp folder."""
    return Path(scratch) if scratch is not None else Path(tempfile.gettempdir()) / "latentflow-worker"


def scratch_folder(scratch: Path | None, name: str, owners: Iterable[int] | None = None) -> Path:
    """A fresh folder under :func:`scratch_base` for a worker, owned by the processes
    ``owners`` (default: this one); the owner file is in place before output/ and temp/ are."""
    folder = scratch_base(scratch) / f"{name[:40]}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    write_owners(folder, owners if owners is not None else (os.getpid(),))
    (folder / "output").mkdir()
    (folder / "temp").mkdir()
    return folder


def process_started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat`` field 22):
    with the pid, it names one process even after the pid is reused. None without ``/proc``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def write_owners(folder: Path, pids: Iterable[int]) -> None:
    """Name ``pids`` (on this host) as the owners of ``folder``: replaced in one step, so a
    reader sees the old file or the new one, never half of one."""
    owners = [{"pid": int(pid), "started": process_started(int(pid))} for pid in pids]
    text = json.dumps({"host": socket.gethostname(), "owners": owners})
    temporary = folder / f".{OWNER_FILE}.{secrets.token_hex(8)}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, folder / OWNER_FILE)


def is_running(pid: int, started: int | None) -> bool:
    """Whether process ``pid`` (started at ``started``, when known) still runs; a zombie has
    exited. Where that cannot be told (no ``/proc``, Windows) it counts as running."""
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        state, start = fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return True
    return state not in ("Z", "X") and (started is None or start == started)


def folder_in_use(folder: Path) -> bool | None:
    """Whether an owner of the scratch folder ``folder`` still runs; None when that cannot be
    told (no or unreadable owner file, another host's folder): such a folder is not touched."""
    try:
        record = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        owners = [(int(owner["pid"]), owner.get("started")) for owner in record["owners"]]
        host = record["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname() or not owners or any(pid <= 0 for pid, _ in owners):
        return None
    return any(is_running(pid, started if isinstance(started, int) else None) for pid, started in owners)


def remove_stale_scratch(scratch: Path | None) -> list[Path]:
    """Remove the scratch folders under :func:`scratch_base` whose owners all stopped (a
    server or worker killed before it could clean up); the folders removed."""
    base = scratch_base(scratch)
    try:
        folders = [path for path in base.iterdir() if path.is_dir() and not path.is_symlink()]
    except OSError:
        return []
    removed = []
    for folder in folders:
        if folder_in_use(folder) is False:
            remove_folder(folder)
            removed.append(folder)
    if removed:
        log.info("removed %d scratch folder(s) of stopped workers under %s", len(removed), base)
    return removed


FileKey = tuple[str, str]  # (kind, name): "temp", "sub/preview_00001_.png"
FileStamp = tuple[int, int, int]  # (size, mtime in ns, inode): a file written again gets another


def written_files(folder: Path) -> dict[FileKey, FileStamp]:
    """``(kind, name)`` -> stamp of every file under ``folder``/output and ``folder``/temp."""
    found: dict[FileKey, FileStamp] = {}
    for kind in FILE_KINDS:
        root = folder / kind
        for path in root.rglob("*"):
            if not path.is_symlink() and path.is_file() and not path.name.endswith(".tmp"):
                try:
                    stat = path.stat()
                except OSError:
                    continue  # removed while we looked
                found[(kind, path.relative_to(root).as_posix())] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    return found


def changed_files(folder: Path, before: Mapping[FileKey, FileStamp]) -> set[FileKey]:
    """The files under ``folder`` that are new since ``before`` (:func:`written_files`) or were
    written again: a pack that saves under a fixed name (``preview.png``) over its placeholder."""
    return {key for key, stamp in written_files(folder).items() if before.get(key) != stamp}


def scratch_services(services: Mapping[str, Any], settings: Any, folder: Path) -> dict[str, Any]:
    """``services`` with the run's output folder, and the temp folder of its settings
    (``<root>/temp``), moved into ``folder``; models and inputs stay where they are."""
    own = dict(services)
    own["settings"] = dataclasses.replace(settings, root=folder, output_dir=folder / "output")
    own["output_dir"] = folder / "output"
    return own


def file_parts(folder: Path, limit: int = DEFAULT_LIMIT_BYTES, chunk: int = CHUNK_BYTES,
               worker: str = "worker", before: Mapping[FileKey, FileStamp] | None = None) -> Iterator[FilePart]:
    """The files under ``folder``/output and ``folder``/temp that are new or written again
    since ``before`` (:func:`written_files` before the run; None: all of them), in chunks,
    sorted by name (numbered files keep their order). Raises :class:`FilesTooLarge` before
    reading any when together they exceed ``limit`` bytes."""
    files: list[tuple[str, str, Path, int]] = []
    for kind, name in sorted(changed_files(folder, before or {})):
        path = folder / kind / name
        files.append((kind, name, path, path.stat().st_size))
    total = sum(size for *_, size in files)
    if total > limit:
        largest = max(files, key=lambda item: item[3])
        raise FilesTooLarge(
            f"{worker} wrote {total / 2**20:.1f} MiB of files in this run ({len(files)} files, the largest "
            f"{largest[0]}/{largest[1]} of {largest[3] / 2**20:.1f} MiB), more than the {limit / 2**20:.0f} MiB "
            "that --worker-files send carries back per prompt; save fewer or smaller files, or run with "
            "--worker-files shared and an output folder on storage every worker shares")
    for kind, name, path, size in files:
        with open(path, "rb") as stream:
            offset = 0
            while True:
                data = stream.read(chunk)
                yield FilePart(kind, name, offset, data, size)
                offset += len(data)
                if offset >= size or not data:
                    break


def leave_placeholders(folder: Path, sent: set[FileKey]) -> None:
    """Empty the files that were sent, keeping their names taken (see the module's note)."""
    for kind, name in sent:
        try:
            os.truncate(folder / kind / name, 0)
        except OSError:
            pass  # gone already: its number may be reused, which only a cached UI could notice


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------- server side


class Landing:
    """Writes the parts of one run's files into the server's folders (``folders``: kind ->
    folder, e.g. ``{"output": settings.output_dir, "temp": settings.root / "temp"}``).

    Not thread-safe: one per run, fed in order by the thread that reads that run's
    messages. :meth:`abort` removes what a failed run left half-written."""

    def __init__(self, folders: Mapping[str, Path], limit: int = DEFAULT_LIMIT_BYTES,
                 known: dict[tuple[str, str], Path] | None = None) -> None:
        self.folders = {kind: Path(folder) for kind, folder in folders.items()}
        self.limit = limit
        self.received = 0
        # (kind, name sent) -> where it is now; ``known`` is the worker's memory across runs
        self.landed: dict[tuple[str, str], Path] = known if known is not None else {}
        self._open: dict[tuple[str, str], tuple[Path, Any, int]] = {}  # -> temporary, stream, bytes so far

    @classmethod
    def for_settings(cls, settings: Any, limit: int = DEFAULT_LIMIT_BYTES,
                     known: dict[tuple[str, str], Path] | None = None) -> "Landing":
        return cls({"output": Path(settings.output_dir), "temp": Path(settings.root) / "temp"}, limit, known)

    def add(self, part: FilePart) -> None:
        key = (part.kind, part.name)
        self.received += len(part.data)
        if self.received > self.limit:
            raise FilesTooLarge(f"a worker sent more than {self.limit / 2**20:.0f} MiB of files for one prompt")
        if key not in self._open:
            self.landed.pop(key, None)  # a name the worker used again (its placeholder was removed)
            if part.offset != 0:
                raise ValueError(f"a worker sent {part.kind}/{part.name} from byte {part.offset}, not its start")
            target = self._target(part.kind, part.name)
            temporary = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            self._open[key] = (temporary, os.fdopen(handle, "wb"), 0)
        temporary, stream, written = self._open[key]
        if part.offset != written:
            raise ValueError(f"a worker sent {part.kind}/{part.name} out of order (byte {part.offset}, "
                             f"expected {written})")
        stream.write(part.data)
        self._open[key] = (temporary, stream, written + len(part.data))
        if part.last:
            stream.close()
            del self._open[key]
            try:
                self.landed[key] = link_unique(temporary, self._target(part.kind, part.name))
            finally:
                temporary.unlink(missing_ok=True)

    def abort(self) -> None:
        for temporary, stream, _ in self._open.values():
            stream.close()
            temporary.unlink(missing_ok=True)
        self._open.clear()

    def _target(self, kind: str, name: str) -> Path:
        """Where ``kind``/``name`` goes on the server; a name leading elsewhere is refused."""
        folder = self.folders.get(kind)
        relative = PurePosixPath(name)
        if folder is None or not name or relative.is_absolute() or ".." in relative.parts or "\\" in name \
                or any(part.startswith(".") and part.endswith(".tmp") for part in relative.parts):
            raise ValueError(f"a worker sent a file named {kind}/{name!r}, which cannot be placed in the "
                             f"server's {kind} folder")
        target = folder.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(folder.resolve()):
            raise ValueError(f"{kind}/{name}: its subfolder is a symbolic link out of {folder}")
        return target

    def rewrite(self, outputs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """The run's UI data with every file entry (``filename``/``subfolder``/``type``)
        naming where its file landed here (``path`` too, when the entry had one)."""
        by_name = {(kind, name): path for (kind, name), path in self.landed.items()}

        def fix(value: Any) -> Any:
            if isinstance(value, list):
                return [fix(item) for item in value]
            if isinstance(value, Mapping) and isinstance(value.get("filename"), str):
                subfolder = str(value.get("subfolder") or "")
                sent = f"{subfolder}/{value['filename']}" if subfolder else value["filename"]
                landed = by_name.get((str(value.get("type") or "output"), sent))
                if landed is None:
                    return dict(value)
                entry = {**value, "filename": landed.name}
                if "path" in entry:
                    entry["path"] = str(landed)
                return entry
            return value

        return {node: {key: fix(value) for key, value in ui.items()} for node, ui in outputs.items()}


def link_unique(source: Path, target: Path) -> Path:
    """Link ``source`` at ``target``, or, when that name is taken, at the next free name:
    ``stem_NNNNN_.ext`` (or ``stem_NNNNN.ext``) takes 1 + the highest number in the folder
    (as SaveImage numbers), another name gets
    ``_2``, ``_3``... before its suffix. Never overwrites; safe against writers racing."""
    match = NUMBERED.match(target.name)
    if match is None:
        candidates: Iterator[Path] = (target if n == 1 else target.with_name(f"{target.stem}_{n}{target.suffix}")
                                      for n in range(1, MAX_NUMBER))
    else:
        stem, tail = match["stem"], match["tail"] + (match["suffix"] or "")
        width = len(match["number"])
        start = next_free(target.parent, stem, tail)
        candidates = (target.with_name(f"{stem}_{n:0{width}d}{tail}") for n in range(start, MAX_NUMBER))
    for candidate in candidates:
        try:
            os.link(source, candidate)  # atomic; fails instead of overwriting
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name for {target}")


def next_free(folder: Path, stem: str, tail: str) -> int:
    """1 + the highest ``N`` of ``<stem>_<N><tail>`` files in ``folder`` (1 when none)."""
    highest = 0
    for path in folder.glob(f"{glob_escape(stem)}_*{glob_escape(tail)}"):
        digits = path.name[len(stem) + 1:len(path.name) - len(tail)]
        if digits.isdigit():
            highest = max(highest, int(digits))
    return highest + 1


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
