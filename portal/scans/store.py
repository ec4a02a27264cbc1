"""The document store: where uploaded and exported scan files are kept, so Lab Manager can refer to
them by path (docs/sources.md source 000: "Document Hub MAY be used to reference or store scan-related documents").

Layout: ``SCAN_STORE_DIR/<practice id>/<upload id>/<safe name>``. A ScanFile refers to one by
``store:<practice id>/<upload id>/<safe name>`` (:func:`ref`); nothing else keeps the bytes (no
BLOB, no cache). An upload's files are first written into a staging folder of the practice
(``<practice id>/.staging-<random>/``) and the folder is renamed into place once every file is
complete, so a reader never sees half a file under a final name; :func:`discard` removes a folder
an upload was refused with, so nothing is left of it.

Names are made safe here (:func:`safe_name`, :func:`safe_path`): no separators, no "..", no control
characters, no leading dot, at most 120 characters with the extension kept. A path read back from
a ref is checked to lie inside the store (:func:`resolve`).

`.info/<name>.json` beside the files holds what the mesh reader found (counts, bounding box,
centroid) so the jaws of an upload can be told by geometry once its last large file was read.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from flask import current_app

from portal.scans.mesh import MeshInfo

PREFIX = "store:"
CHUNK = 1 << 20
MAX_NAME = 120
INFO_DIR = ".info"
STAGING = ".staging-"
_UNSAFE = re.compile(r"[^\w.()+\- ]+", re.UNICODE)


class StoreError(ValueError):
    """A file could not be written into the store; str() is for the person who sent it."""


class TooLarge(StoreError):
    pass


def root() -> Path:
    return Path(current_app.config["SCAN_STORE_DIR"]).resolve()


def ref(relative: str | PurePosixPath) -> str:
    return PREFIX + str(relative)


def is_store_ref(value: str) -> bool:
    return value.startswith(PREFIX)


def resolve(value: str) -> Path | None:
    """The absolute path a `store:` ref names, or None when it is not one or would leave the store."""
    if not is_store_ref(value):
        return None
    relative = value[len(PREFIX):]
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    base = root()
    path = (base / Path(*parts)).resolve()
    if base not in path.parents:
        return None
    return path


# -- names -------------------------------------------------------------------------------------------

def safe_name(name: str) -> str:
    """A file name that is safe to create: the last component of what a browser or a zip says,
    letters, digits and ``._-()+ `` only, no leading dot or space, the extension kept when shortened."""
    name = unicodedata.normalize("NFC", name or "").replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE.sub("_", name).strip(" .")
    name = re.sub(r"_{2,}", "_", name)
    if not name or set(name) <= {"_", "."}:
        name = "file"
    stem, ext = os.path.splitext(name)
    if len(ext) > 12:
        stem, ext = name, ""
    if len(name) > MAX_NAME:
        name = stem[:MAX_NAME - len(ext)].rstrip(" .") + ext
    return name


def safe_path(path: str) -> str:
    """A relative path inside an export, each component made safe (a zip's own folders are kept)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(safe_name(p) for p in parts) or "file"


def unique(name: str, taken: set[str]) -> str:
    """`name`, or `name (2)`, `name (3)`... so two files of one upload never share a path."""
    candidate, n = name, 1
    stem, ext = os.path.splitext(name)
    while candidate.lower() in taken:
        n += 1
        candidate = f"{stem} ({n}){ext}"
    taken.add(candidate.lower())
    return candidate


# -- writing -----------------------------------------------------------------------------------------

class Staging:
    """A folder for one upload, renamed into place by :meth:`publish`; :meth:`discard` on refusal."""

    def __init__(self, practice_id: int):
        self.practice_id = practice_id
        self.base = root() / str(practice_id)
        self.base.mkdir(parents=True, exist_ok=True)
        self.path = self.base / f"{STAGING}{uuid.uuid4().hex}"
        self.path.mkdir()
        self.published: Path | None = None
        self.created = False  # whether publish() created the final folder (vs found it there)

    def file(self, relative: str) -> Path:
        target = self.path.joinpath(*relative.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def publish(self, upload_id: str) -> str:
        """Move the staged files to `<practice>/<upload_id>`; returns that relative folder. When the
        folder is there already (the same export read again), the staged copy is dropped and the
        folder kept as it is: it holds the same bytes."""
        final = self.base / upload_id
        try:
            os.rename(self.path, final)
            self.created = True
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(self.path, ignore_errors=True)
            os.utime(final)  # fresh: the orphan tidy-up leaves it alone
        self.published = final
        return f"{self.practice_id}/{upload_id}"

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self.published is not None and self.created:
            shutil.rmtree(self.published, ignore_errors=True)


def copy_stream(source: BinaryIO, target: Path, limit: int | None = None, digest=None) -> int:
    """Copy `source` to `target` a chunk at a time; returns the bytes written. Raises TooLarge past
    `limit`. `digest` (a hashlib object) is fed the same bytes."""
    written = 0
    with open(target, "xb") as out:
        while True:
            data = source.read(CHUNK)
            if not data:
                break
            written += len(data)
            if limit is not None and written > limit:
                raise TooLarge(f"more than {limit:,} bytes")
            if digest is not None:
                digest.update(data)
            out.write(data)
    return written


def _info_path(path: Path) -> Path | None:
    """Where what the reader found about the stored file at `path` is kept: `.info/` of its upload
    folder (a staging folder too: it moves with the files when published)."""
    base = root()
    try:
        parts = path.resolve().relative_to(base).parts
    except ValueError:
        return None
    if len(parts) < 3:
        return None
    return base.joinpath(parts[0], parts[1], INFO_DIR, "__".join(parts[2:]) + ".json")


def write_info(path: Path, info: MeshInfo) -> None:
    target = _info_path(path)
    if target is None:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(asdict(info)))


def read_info(path: Path) -> MeshInfo | None:
    target = _info_path(path)
    try:
        data = json.loads(target.read_text()) if target is not None else None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for key in ("bbox_min", "bbox_max", "centroid"):
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    try:
        return MeshInfo(**data)
    except TypeError:
        return None


def export_id(entries: Iterable[tuple[str, str]]) -> str:
    """The upload id of an export: a digest of its files (path, sha256), so the same export read
    twice lands in the same folder under the same refs (and ingest sees the same content key)."""
    h = hashlib.sha256()
    for path, sha in sorted(entries):
        h.update(f"{path}\0{sha}\n".encode())
    return "export-" + h.hexdigest()[:32]


# -- tidying ---------------------------------------------------------------------------------------

def orphans(referenced: set[str], older_than: float) -> list[Path]:
    """Upload folders (and staging folders left by a crash) older than `older_than` seconds that no
    ScanFile refers to. `referenced` holds "practice/upload" folder names."""
    base = root()
    if not base.is_dir():
        return []
    cutoff = time.time() - older_than
    found = []
    for practice in base.iterdir():
        if not practice.is_dir() or practice.is_symlink():
            continue
        for folder in practice.iterdir():
            if not folder.is_dir() or folder.is_symlink():
                continue
            if f"{practice.name}/{folder.name}" in referenced:
                continue
            try:
                if folder.stat().st_mtime < cutoff:
                    found.append(folder)
            except OSError:
                continue
    return found


def discard_file(path: Path | None) -> None:
    """Remove one stored file and what the reader kept about it (a file refused after it was stored)."""
    if path is None:
        return
    info = _info_path(path)
    path.unlink(missing_ok=True)
    if info is not None:
        info.unlink(missing_ok=True)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
