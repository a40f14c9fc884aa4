"""The output folder of a run: never an input folder, writable, one run at a time, no leftovers of a killed run.

* :func:`check_output_folder` refuses a folder that is, contains or lies inside a folder of the inputs (the
  outputs would overwrite the photos, or a rerun would take the outputs for new inputs), a path that is a file,
  and a folder that cannot be made.
* :class:`FolderLock` holds ``.gdp.lock`` in the folder with ``flock`` for the whole run (and removes it at the
  end); making that file is the test that the folder can be written (whatever the permission bits say to root,
  an immutable folder or a read-only file system refuse it). A second run into the same folder stops with one line naming the first (its process, start time and
  command). The operating system drops the lock when the process ends, however it ends (``kill -9`` included), so
  a stale lock file never blocks.
* :func:`remove_temporary_files` deletes the temporary files (``.<name>.*.tmp.<ext>``, see
  :func:`gdp_lightning.io.atomic_path`) that a killed run left behind: called while holding the lock.
* :func:`remove_unused_log_folder` deletes the log folder (``logs/<name>/version_N``) that a run made and stopped
  in before it logged anything (a missing input folder or checkpoint found in setup), so that the next run takes
  that version instead of leaving an empty one beside it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from .errors import InputError

__all__ = ["check_output_folder", "FolderLock", "remove_temporary_files", "remove_unused_log_folder",
           "existing_ancestor", "LOCK_NAME"]

LOCK_NAME = ".gdp.lock"
TEMPORARY = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(output: Path, input_folders: Iterable[Path], option: str = "--writer.output_dir") -> None:
    """Raise :class:`InputError` (one line) when ``output`` cannot take the outputs; see the module docstring."""
    where = Path(output)
    resolved = where.resolve()
    for folder in {Path(f).resolve() for f in input_folders}:
        if _inside(resolved, folder) or _inside(folder, resolved):
            relation = ("is" if resolved == folder else "lies inside" if _inside(resolved, folder)
                        else "contains")
            raise InputError(f"{option} {where} {relation} the input folder {folder}: the outputs would be written "
                             "among the photos; give an output folder outside it")
    if where.exists() and not where.is_dir():
        raise InputError(f"{option} {where} is a file, not a folder; give a folder (it is made if missing)")
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{option} {where}: cannot make the folder ({_reason(e)}); give a folder you can write "
                         "to") from None


def _reason(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "read-only file system"
    return error.strerror or str(error)


class FolderLock:
    """An exclusive lock on an output folder for one run (see the module docstring)."""

    def __init__(self, folder: Path, command: Optional[Sequence[str]] = None):
        self.folder = Path(folder)
        self.command = list(command) if command is not None else list(sys.argv)
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, option: str = "--writer.output_dir") -> None:
        """Take the lock or raise :class:`InputError` naming the run that holds it."""
        import fcntl

        if self._fd is not None:
            return
        path = self.folder / LOCK_NAME
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise InputError(f"{option} {self.folder}: cannot write to it ({_reason(e)}); give a folder you can "
                                 "write to") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _describe_holder(path)
                os.close(fd)
                raise InputError(f"{option} {self.folder} is in use by another gdp run ({holder}); wait for it to "
                                 "end or give another output folder") from None
            try:  # the run that held it may have removed the file meanwhile: lock the file that is there
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(self.command)}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(record) + "\n").encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (a run that opened the file meanwhile sees it gone and
        retries)."""
        if self._fd is None:
            return
        import fcntl

        (self.folder / LOCK_NAME).unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "it is starting"
    command = holder.get("command", "?")
    if len(command) > 120:
        command = command[:117] + "..."
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}: {command}"


def remove_temporary_files(folder: Path) -> List[Path]:
    """Delete what a killed run left half-written in ``folder`` and its sub-folders; returns what was removed."""
    removed: List[Path] = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).rglob(".*.tmp*"):
        if path.is_file() and TEMPORARY.match(path.name):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


#: what a run writes into its log folder before it has logged anything: the resolved config, the (empty)
#: hyper-parameters and TensorBoard's event file with its header alone
_SETUP_FILES = ("config.yaml", "hparams.yaml")


def _logs_nothing(events: Path) -> bool:
    """True when a TensorBoard event file holds no summary (no scalar, image, text or hyper-parameters)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    try:
        return not any(event.HasField("summary") for event in EventFileLoader(str(events)).Load())
    except Exception:  # noqa: BLE001 - a file it cannot read is kept, as anything it does not know
        return False


def existing_ancestor(path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def remove_unused_log_folder(folder: Path, up_to: Optional[Path] = None) -> bool:
    """Delete ``folder`` when it holds only what a run writes before it logs anything (:data:`_SETUP_FILES` and event
    files without a summary); anything else (a checkpoint, a logged metric, a file of the user's) keeps it. Then its
    parents below ``up_to`` (the folder that existed before the run, :func:`existing_ancestor`) go too while they are
    empty. Returns whether ``folder`` was deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    files = list(folder.iterdir())
    for path in files:
        if not path.is_file() or not (path.name in _SETUP_FILES or
                                      (path.name.startswith("events.out.tfevents.") and _logs_nothing(path))):
            return False
    try:
        for path in files:
            path.unlink()
        folder.rmdir()
    except OSError:
        return False
    if up_to is not None:
        up_to = Path(up_to).absolute()
        parent = folder.absolute().parent
        while up_to in parent.parents:
            try:
                parent.rmdir()  # only an empty folder
            except OSError:
                break
            parent = parent.parent
    return True
