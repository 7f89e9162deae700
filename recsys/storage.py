"""A path or a URI: local folders and object storage behind one small pathlib-like API.

``location(x)`` turns a plain path (or ``file://``) into a ``pathlib.Path`` and any other URI
that ``pyarrow.fs`` resolves (``s3://``, ``gs://``, ``hdfs://``, ...) into a ``StoragePath``,
which offers the part of ``Path`` the project uses (``/``, ``name``, ``parent``, ``exists``,
``read_bytes``, ``write_text``, ``glob``, ...). Code written against that subset works on both,
and a local run keeps using ``pathlib`` itself, so it behaves exactly as before.

Credentials and endpoint come from the standard environment, read by pyarrow's S3 client:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` (an S3-compatible server
such as MinIO or moto), ``AWS_DEFAULT_REGION``. Buckets must exist; nothing creates them.

Publishing a folder (``published``): it is built locally, uploaded under a hidden sibling
prefix ``.<name>.tmp-<pid>``, then moved into place with the ``marker`` file (``dataset.json``,
``manifest.json``) last, so a reader that waits for the marker never sees half a folder.

Example:
    >>> loc = location("s3://bucket/data/synth")            # doctest: +SKIP
    >>> spec = (loc / "dataset.json").read_text()            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs

_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_FS_CACHE: dict[str, pafs.FileSystem] = {}
_FS_LOCK = threading.Lock()


def is_uri(value: object) -> bool:
    """True for a URI other than ``file://`` (those are local paths)."""
    if isinstance(value, StoragePath):
        return True
    match = _URI.match(str(value)) if isinstance(value, (str, os.PathLike)) else None
    return match is not None and match["scheme"].lower() != "file"


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    match = _URI.match(uri)
    assert match is not None
    rest = uri[match.end() :]
    key = f"{match['scheme'].lower()}://{rest.split('/', 1)[0]}@{os.environ.get('AWS_ENDPOINT_URL', '')}"
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            try:
                fs, _ = pafs.FileSystem.from_uri(uri)
            except Exception as exc:
                raise ValueError(f"{uri}: cannot open this URI's storage: {exc}") from exc
            _FS_CACHE[key] = fs
    return fs, rest.rstrip("/")


class StoragePath:
    """A file or folder on a ``pyarrow.fs`` filesystem, named by its URI."""

    def __init__(self, uri: str) -> None:
        match = _URI.match(uri)
        if match is None:
            raise ValueError(f"{uri!r} is not a URI (expected scheme://...)")
        self.scheme = match["scheme"].lower()
        self.fs, self.path = _filesystem(uri)
        if not self.path:
            raise ValueError(f"{uri!r}: names no bucket or folder")

    def _child(self, path: str) -> "StoragePath":
        return StoragePath(f"{self.scheme}://{path}")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"StoragePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoragePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, other: str | os.PathLike) -> "StoragePath":
        tail = str(other).strip("/")
        return self._child(f"{self.path}/{tail}" if tail else self.path)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> "StoragePath":
        head = self.path.rsplit("/", 1)[0] if "/" in self.path else self.path
        return self._child(head)

    def with_suffix(self, suffix: str) -> "StoragePath":
        return self.parent / Path(self.name).with_suffix(suffix).name

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def resolve(self) -> "StoragePath":
        return self

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Folders need not exist on object storage; on other filesystems they are created."""
        if self.scheme not in ("s3", "gs", "gcs"):
            self.fs.create_dir(self.path, recursive=True)

    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self}: no such file") from None
        except OSError as exc:
            if not self.exists():
                raise FileNotFoundError(f"{self}: no such file") from None
            raise OSError(f"{self}: cannot read: {exc}") from exc

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """Write the whole object; readers see the old content or the new, never a part."""
        if self.scheme in ("s3", "gs", "gcs"):  # one PUT is atomic
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
            return len(data)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self.path)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not self.is_file():
            if missing_ok:
                return
            raise FileNotFoundError(f"{self}: no such file")
        self.fs.delete_file(self.path)

    def rmtree(self) -> None:
        """Delete the folder and everything under it (nothing if absent)."""
        if self.is_dir():
            self.fs.delete_dir(self.path)

    def files(self) -> list[str]:
        """Paths (relative to this folder, sorted) of every file under it."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        n = len(self.path) + 1
        return sorted(i.path[n:] for i in infos if i.type == pafs.FileType.File)

    def iterdir(self) -> Iterator["StoragePath"]:
        for info in self.fs.get_file_info(pafs.FileSelector(self.path)):
            yield self._child(info.path)

    def glob(self, pattern: str) -> Iterator["StoragePath"]:
        """Files under this folder whose relative path matches ``pattern`` part by part."""
        want = pattern.split("/")
        for rel in self.files():
            parts = rel.split("/")
            if len(parts) == len(want) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, want)):
                yield self / rel


Location = Path | StoragePath


def location(value: str | os.PathLike | StoragePath) -> Location:
    """``value`` as a ``Path`` (plain paths, ``file://``) or a ``StoragePath`` (other URIs)."""
    if isinstance(value, (Path, StoragePath)):
        return value
    text = os.fspath(value)
    if text.lower().startswith("file://"):
        return Path(text[len("file://") :])
    return StoragePath(text) if is_uri(text) else Path(text)


def arrow_filesystem(loc: Location) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for pyarrow and Ray Data readers."""
    if isinstance(loc, StoragePath):
        return loc.fs, loc.path
    return pafs.LocalFileSystem(), str(loc)


def append_text(loc: Location, text: str) -> None:
    """Append to a file; on object storage the object is rewritten (one writer only)."""
    if isinstance(loc, Path):
        with loc.open("a") as f:
            f.write(text)
        return
    old = loc.read_bytes() if loc.is_file() else b""
    loc.write_bytes(old + text.encode())


def remove(loc: Location) -> None:
    """Delete a file or a folder tree, if present."""
    if isinstance(loc, StoragePath):
        if loc.is_dir():
            loc.rmtree()
        else:
            loc.unlink(missing_ok=True)
    elif loc.is_dir():
        shutil.rmtree(loc)
    else:
        loc.unlink(missing_ok=True)


def download_tree(src: StoragePath, dst: Path, only: tuple[str, ...] | None = None) -> Path:
    """Copy the files under ``src`` (those whose first part is in ``only``, if given) into ``dst``."""
    for rel in src.files():
        if only is not None and rel.split("/", 1)[0] not in only:
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((src / rel).read_bytes())
    return dst


def _upload_tree(src: Path, dst: StoragePath) -> list[str]:
    names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    for name in names:
        with (src / name).open("rb") as fin, dst.fs.open_output_stream(f"{dst.path}/{name}") as fout:
            shutil.copyfileobj(fin, fout, 8 << 20)
    return names


def check_publishable(dest: StoragePath, marker: str, overwrite: bool) -> None:
    """Refuse a ``dest`` holding something else than a published folder, or one without ``overwrite``."""
    if not dest.is_dir() or not dest.files():
        return
    if not (dest / marker).is_file():
        raise FileExistsError(f"{dest}: not empty and holds no {marker}; refusing to overwrite it")
    if not overwrite:
        raise FileExistsError(f"{dest}: a published folder ({marker}) exists here; pass --overwrite to replace it")


def publish_tree(src: Path, dest: StoragePath, marker: str) -> None:
    """Upload the local folder ``src`` to ``dest``: under a hidden temporary prefix first, then
    moved into place, ``marker`` last (an old folder at ``dest`` is unpublished, then replaced)."""
    if not (src / marker).is_file():
        raise FileNotFoundError(f"{src}: no {marker} to publish")
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    tmp.rmtree()
    try:
        names = _upload_tree(src, tmp)
        (dest / marker).unlink(missing_ok=True)  # readers refuse the folder from here on
        dest.rmtree()
        for name in [n for n in names if n != marker] + [marker]:
            dest.fs.move(f"{tmp.path}/{name}", f"{dest.path}/{name}")
    finally:
        tmp.rmtree()


@contextlib.contextmanager
def published(dest: str | os.PathLike | StoragePath, marker: str, overwrite: bool = False) -> Iterator[Path]:
    """A local folder to build into; on success it is published at ``dest`` (``publish_tree``).

    A local ``dest`` is yielded as is (its writer already builds beside it and renames).
    """
    loc = location(dest)
    if isinstance(loc, Path):
        yield loc
        return
    check_publishable(loc, marker, overwrite)
    with tempfile.TemporaryDirectory(prefix="recsys-publish-") as scratch:
        local = Path(scratch) / loc.name
        yield local
        publish_tree(local, loc, marker)


def read_parquet(loc: Location, columns: list[str] | None = None):  # type: ignore[no-untyped-def]
    """``pyarrow.parquet.read_table`` of a local file or an object (a ``pyarrow.Table``)."""
    import pyarrow.parquet as pq

    if isinstance(loc, Path):
        return pq.read_table(loc, columns=columns)
    return pq.read_table(loc.path, columns=columns, filesystem=loc.fs)


def parquet_file(loc: Location):  # type: ignore[no-untyped-def]
    """A ``pyarrow.parquet.ParquetFile`` of a local file or an object (footer read; row groups on demand)."""
    import pyarrow.parquet as pq

    if isinstance(loc, Path):
        return pq.ParquetFile(loc)
    return pq.ParquetFile(loc.path, filesystem=loc.fs)


def save_tensors(tensors: dict, loc: Location) -> None:  # type: ignore[type-arg]
    """safetensors file of ``tensors`` at ``loc`` (locally: written beside, then renamed)."""
    from safetensors.torch import save, save_file

    if isinstance(loc, StoragePath):
        loc.write_bytes(save(tensors))
        return
    tmp = loc.with_suffix(loc.suffix + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(loc)


def load_tensors(loc: Location) -> dict:  # type: ignore[type-arg]
    """The tensors of a safetensors file (memory-mapped when local)."""
    from safetensors.torch import load, load_file

    return load(loc.read_bytes()) if isinstance(loc, StoragePath) else load_file(str(loc))
