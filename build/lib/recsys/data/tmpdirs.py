"""The hidden sibling folders of an atomically written dataset folder, and their cleanup.

``convert`` writes ``.NAME.tmp-PID`` beside ``NAME`` and renames it at the end (an old dataset
is moved to ``.NAME.old-PID`` for that moment). A conversion killed before it could clean up
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
from pathlib import Path


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
            print(f"restored {out_dir} from {folder.name}, left by conversion pid {pid} (no longer running) "
                  "between replacing the dataset and removing the old one", file=sys.stderr)
        else:
            size = _mib(folder)
            shutil.rmtree(folder)
            print(f"removed stale temporary folder {folder} ({size:.1f} MiB) left by conversion pid {pid}, "
                  "which is no longer running", file=sys.stderr)
        found.append(folder)
    return found
