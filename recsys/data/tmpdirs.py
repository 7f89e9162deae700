"""Writing a dataset folder atomically (``convert`` and ``synthetic``), and cleaning up after a killed writer.

``dataset_folder`` yields ``.NAME.tmp-PID`` beside ``NAME`` to build into and renames it at the
end (an old dataset is moved to ``.NAME.old-PID`` for that moment); a failure removes it, so a
folder that looks complete always is. An existing dataset is replaced only with ``overwrite``;
any other non-empty folder is refused. A writer killed before it could clean up
(SIGKILL, power loss) leaves them behind; ``clean_stale`` removes those whose process is no
longer running on this machine, and moves an ``.old`` folder back when ``NAME`` is missing (the
kill fell between the two renames). PIDs are this machine's: two machines converting into
one shared folder at the same time are not told apart.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from recsys.features import DATASET_FILE

Refusal = Callable[[Path, str], Exception]  # (folder, problem) -> the error to raise


def temp_folder(out_dir: Path, kind: str = "tmp") -> Path:
    """This process's hidden sibling of ``out_dir``: ``.NAME.tmp-PID`` (or ``.old-PID``)."""
    return out_dir.parent / f".{out_dir.name}.{kind}-{os.getpid()}"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / (1 << 20)


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove (or restore) the hidden folders of dead conversions into ``out_dir``; each one is
    reported on stderr. Returns the folders removed or restored."""
    parent = out_dir.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(tmp|old)-(\d+)")
    found = []
    for folder in sorted(parent.iterdir()):
        match = pattern.fullmatch(folder.name)
        if match is None or not folder.is_dir() or _running(int(match.group(2))):
            continue
        kind, pid = match.group(1), match.group(2)
        if kind == "old" and not out_dir.exists():
            folder.rename(out_dir)
            print(
                f"restored {out_dir} from {folder.name}, left by conversion pid {pid} (no longer running) "
                "between replacing the dataset and removing the old one",
                file=sys.stderr,
            )
        else:
            size = _mib(folder)
            shutil.rmtree(folder)
            print(
                f"removed stale temporary folder {folder} ({size:.1f} MiB) left by conversion pid {pid}, which is no longer running", file=sys.stderr
            )
        found.append(folder)
    return found


def _file_exists(folder: Path, problem: str) -> Exception:
    return FileExistsError(f"{folder}: {problem}")


def check_out_dir(out_dir: Path, overwrite: bool, refuse: Refusal = _file_exists) -> None:
    """Refuse an ``out_dir`` that is a file, a non-empty folder without a dataset, or a dataset without ``overwrite``."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise refuse(out_dir, "output path exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not (out_dir / DATASET_FILE).is_file():
        raise refuse(out_dir, "output folder is not empty and holds no dataset; refusing to overwrite it")
    if not overwrite:
        raise refuse(out_dir, "a dataset exists here; pass overwrite=True (--overwrite) to replace it")


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished folder into place (replacing an old dataset only now)."""
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    old = temp_folder(out_dir, "old")
    out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old)


@contextmanager
def dataset_folder(out_dir: Path, overwrite: bool, refuse: Refusal = _file_exists) -> Iterator[Path]:
    """The hidden folder to build the dataset ``out_dir`` in; renamed into place when the block succeeds,
    removed when it fails. Stale folders of dead writers are cleaned first; ``refuse`` makes the error
    for an ``out_dir`` that may not be replaced (``check_out_dir``)."""
    clean_stale(out_dir)
    check_out_dir(out_dir, overwrite, refuse)
    tmp = temp_folder(out_dir)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
