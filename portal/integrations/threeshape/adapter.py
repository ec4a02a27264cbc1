"""3Shape TRIOS by export: a watched import folder (docs/vendors/threeshape.md, docs/sources.md source 002).

TRIOS (or a person) drops order exports, each a folder or a .zip named after the order id, into a
folder on the Lab Manager server; the practice's 3Shape integration names it (setting
`watch_folder`; the Settings → Integrations form stores it as `folder`, and both are read). The sync job
polls it like any vendor (`polls=True`, `uses_oauth=False`: there is nothing to sign in to):

1. An entry is ready when nothing in it was modified for `settle_seconds` (default 60): TRIOS
   writes an export file by file, and a copy over the network can pause, so a folder or zip that
   changed lately may be half written and is left for the next poll. Names starting with "." or
   ending in .tmp, .part or .crdownload are never read (temporary names of copying tools), nor are
   the `imported/` and `failed/` folders.
2. A ready export is copied into a staging folder of the document store (portal/scans/store.py);
   if it changed while being copied it is dropped and read next time. The copy is what is read
   (threeshape.read_export), so what was checked is what is kept; its files are published under a
   folder named after their content (store.export_id).
3. poll() yields the export's VendorOrder; the sync job ingests and commits it, and only then asks
   the generator for the next one. That is when the export is moved to `<folder>/imported/`.
   An export that can't be read (threeshape.ExportError) is moved to `<folder>/failed/` with
   `<name>.error.txt` saying why, and the poll goes on with the next.

Crash points: killed after the commit but before the move, the export is read again next time;
its files land in the same store folder, so the order has the same refs and the same content key,
and ingest finds it "unchanged": a no-op, then the move. Killed before the commit, nothing of it
was kept but a store folder no row refers to, which the sweep removes after a day
(uploads.sweep). A move that fails (permissions) is the integration's last error; the export
stays and is tried again, and its re-read is a no-op as above.

At most MAX_PER_POLL exports are read in one poll (the sync job has ten minutes; large exports are
read in it); the rest wait for the next.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path

from flask import current_app

from portal.integrations.base import ScannerAdapter
from portal.integrations.http import VendorError
from portal.integrations.threeshape.export import ExportError, Limits
from portal.integrations.vendor import Vendor, VendorOrder
from portal.scans import mesh, store, uploads

FOLDER_KEYS = ("watch_folder", "folder")
SETTLE_SECONDS = 60
MAX_PER_POLL = 20
IMPORTED, FAILED = "imported", "failed"
TEMPORARY = (".tmp", ".part", ".crdownload", ".partial")


class _Changed(Exception):
    """The export changed while it was being copied: it is still being written."""


def folder_setting(config: dict) -> str:
    return next((str(config[k]).strip() for k in FOLDER_KEYS if str(config.get(k) or "").strip()), "")


def validate_settings(config: dict) -> list[str]:
    """What is wrong with a 3Shape integration's settings, as sentences for the admin form (empty
    when they are fine): the folder must be an absolute path to an existing directory the server can
    read and write (exports are moved to imported/ and failed/), outside the document store."""
    problems = []
    path = folder_setting(config)
    if not path:
        return ["Enter the watched import folder: the absolute path where TRIOS exports its orders."]
    if not os.path.isabs(path):
        problems.append("Give an absolute path, starting with /.")
    elif not os.path.isdir(path):
        problems.append("There is no such folder on the Lab Manager server.")
    elif not os.access(path, os.R_OK | os.X_OK):
        problems.append("Lab Manager may not read that folder; give its user read access.")
    elif not os.access(path, os.W_OK):
        problems.append("Lab Manager may not write in that folder (it moves exports to imported/ and failed/); "
                        "give its user write access.")
    else:
        real, store_root = Path(path).resolve(), Path(current_app.config["SCAN_STORE_DIR"]).resolve()
        if real == store_root or store_root in real.parents or real in store_root.parents:
            problems.append("That folder holds (or is inside) Lab Manager's own scan store; choose another.")
    settle = config.get("settle_seconds")
    if settle not in (None, ""):
        try:
            if not 0 <= int(settle) <= 3600:
                raise ValueError
        except (TypeError, ValueError):
            problems.append("The settle time is a number of seconds from 0 to 3600.")
    return problems


class FolderAdapter(ScannerAdapter):
    vendor = Vendor.THREESHAPE
    uses_oauth = False
    polls = True

    validate_settings = staticmethod(validate_settings)

    # -- the folder ------------------------------------------------------------------------------------

    @property
    def settle_seconds(self) -> int:
        try:
            return int(self.integration.config.get("settle_seconds", SETTLE_SECONDS))
        except (TypeError, ValueError):
            return SETTLE_SECONDS

    def folder(self) -> Path:
        """The watched folder, or VendorError saying why it can't be used."""
        problems = validate_settings(self.integration.config)
        if problems:
            raise VendorError(" ".join(problems), "refused")
        return Path(folder_setting(self.integration.config))

    def entries(self, now: float | None = None) -> tuple[list[Path], list[Path]]:
        """(exports ready to read, oldest first; exports still being written)."""
        folder = self.folder()
        now = time.time() if now is None else now
        ready, settling = [], []
        try:
            listing = list(os.scandir(folder))
        except OSError as exc:
            raise VendorError(f"The watched folder can't be listed ({exc.strerror}).", "refused") from None
        for entry in listing:
            name = entry.name
            if name.startswith(".") or name.lower().endswith(TEMPORARY) or name in (IMPORTED, FAILED):
                continue
            path = Path(entry.path)
            if not (entry.is_symlink() or entry.is_dir(follow_symlinks=False)
                    or (entry.is_file(follow_symlinks=False) and name.lower().endswith(".zip"))):
                continue  # a stray file that is not an export: left alone
            try:
                newest = _newest_mtime(path)
            except OSError:
                continue
            (ready if now - newest >= self.settle_seconds else settling).append((newest, path))
        return [p for _, p in sorted(ready)], [p for _, p in sorted(settling)]

    # -- the adapter ---------------------------------------------------------------------------------

    def poll(self) -> Iterator[VendorOrder]:
        ready, _ = self.entries()
        practice_id = self.integration.practice_id
        for path in ready[:MAX_PER_POLL]:
            staging = store.Staging(practice_id)
            try:
                source = _copy_in(path, staging)
                staged = uploads.stage_export(staging, source)
            except ExportError as exc:
                staging.discard()
                self._move(path, FAILED, str(exc))
                continue
            except _Changed:
                staging.discard()
                continue
            except BaseException:
                staging.discard()
                raise
            yield staged.order()
            # Resumed only once the sync job has committed the ingest of that order.
            self._move(path, IMPORTED)

    def fetch(self, order_ref: str) -> VendorOrder | None:
        return None  # exports are not fetched by id; the poll finds them

    def test_connection(self) -> str:
        folder = self.folder()
        ready, settling = self.entries()
        failed = folder / FAILED
        failures = sum(1 for p in failed.iterdir() if not p.name.endswith(".error.txt")) if failed.is_dir() else 0
        words = [f"The folder {folder} is there, readable and writable.",
                 f"{_count(len(ready), 'export')} waiting to be imported"
                 + (f", {_count(len(settling), 'export')} still being written" if settling else "") + "."]
        if failures:
            words.append(f"{_count(failures, 'export')} in failed/ (see the .error.txt beside each).")
        return " ".join(words)

    def disconnect(self) -> None:
        self.integration.connected_at = None  # no tokens to forget

    # -- moving ----------------------------------------------------------------------------------------

    def _move(self, path: Path, where: str, reason: str = "") -> Path:
        target_dir = path.parent / where
        try:
            target_dir.mkdir(exist_ok=True)
            target = _free_name(target_dir, path.name)
            os.rename(path, target)
            if reason:
                stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
                (target_dir / f"{target.name}.error.txt").write_text(
                    f"{path.name} was not imported ({stamp}):\n{reason}\n\nFix the export and put it back in "
                    f"{path.parent} to try again.\n")
        except OSError as exc:
            raise VendorError(f"{path.name} could not be moved to {where}/ ({exc.strerror}); it stays in the "
                              "watched folder and is tried again.", "refused") from None
        return target


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _free_name(folder: Path, name: str) -> Path:
    target, n = folder / name, 1
    stem, ext = (name[:-4], name[-4:]) if name.lower().endswith(".zip") else (name, "")
    while target.exists() or target.is_symlink():
        n += 1
        target = folder / f"{stem} ({n}){ext}"
    return target


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    continue
    return newest


def _signature(path: Path) -> list[tuple[str, int, int]]:
    if not path.is_dir():
        st = path.stat()
        return [("", st.st_size, st.st_mtime_ns)]
    out = []
    for root, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            out.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
    return sorted(out)


def _copy_in(path: Path, staging: store.Staging) -> Path:
    """Copy the export into `staging` (under .source/, keeping its name: read_export looks for
    `<name>.xml`), refusing links and what is too large; _Changed when it moved meanwhile."""
    if path.is_symlink():
        raise ExportError(f"{path.name} is a symbolic link; put the export itself in the folder.")
    limits = Limits()
    before = _signature(path)
    total = sum(size for _, size, _ in before)
    if total > limits.max_total_bytes:
        raise ExportError(f"The export holds {mesh.human_bytes(total)}, more than the "
                          f"{mesh.human_bytes(limits.max_total_bytes)} an export may hold.")
    if len(before) > limits.max_entries:
        raise ExportError(f"The export holds more than {limits.max_entries:,} files.")
    target = staging.file(f"{uploads.SOURCE_DIR}/{path.name}")
    try:
        _copy_tree(path, target)
    except PermissionError as exc:
        raise ExportError(f"Lab Manager may not read {exc.filename or path.name}; give its user read access.") from None
    except OSError:
        raise _Changed() from None  # a file went away while being copied: still being written or moved
    try:
        after = _signature(path)
    except OSError:
        raise _Changed() from None
    if after != before:
        raise _Changed()
    return target


def _copy_tree(path: Path, target: Path) -> None:
    if path.is_dir():
        target.mkdir()
        for root, dirs, files in os.walk(path):
            rel = Path(root).relative_to(path)
            for name in dirs + files:
                if os.path.islink(os.path.join(root, name)):
                    raise ExportError(f"The export holds a symbolic link ({(rel / name).as_posix()}); "
                                      "Lab Manager refuses it.")
            for name in dirs:
                (target / rel / name).mkdir()
            for name in files:
                with open(os.path.join(root, name), "rb") as src:
                    store.copy_stream(src, target / rel / name)
    else:
        with open(path, "rb") as src:
            store.copy_stream(src, target)
