"""Where a scoring run keeps its files: a local path, or any fsspec URL (``s3://bucket/x``, ``gs://...``,
``file:///...``), so that Ray actors on machines that share no disk write to the same work directory.

A local path behaves as it always has: a file or folder is written beside its place, then moved there with one
``os.replace`` (:func:`hf_prospector.utils.atomic_write`). A URL goes through fsspec: what is written is staged
in a local temporary folder, uploaded beside its place, then moved there. On an object store an object written in
one put is atomic already (no partial object is ever visible), and a move is a copy and a delete: there a file is
put in its place at once, and a folder (a saved dataset) is uploaded beside and moved, its files one by one.
Credentials come from fsspec's config and the filesystem's own sources (e.g. the AWS variables for ``s3://``),
never from a setting of this library; a URL is shown with its user, password and query hidden (:func:`shown`),
and an error that would show them is scrubbed (:func:`secrets_hidden`).
"""

from __future__ import annotations

import posixpath
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .sources import exception_chain
from .utils import atomic_write, remove_path

# Object stores, where one put of an object is atomic: a file is put in its place, not uploaded beside and copied.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oci", "oss", "r2"})
# A URL's user info: no "/" in it, but a password may hold one when not %-encoded (an AWS secret key often does).
_USERINFO = re.compile(r"^([a-zA-Z][\w+.-]*://)([^/@]*|[^/@:]*:[^@]*)@")


class StorageError(OSError):
    """A filesystem error whose message named a URL's credentials: the same error, with them hidden."""


def is_url(where: str | Path) -> bool:
    """Whether ``where`` is a URL (``protocol://...``), not a local path."""
    return "://" in str(where)


def shown(where: str | Path) -> str:
    """``where`` as messages show it: a URL's ``user:password@`` and query hidden as ``***``."""
    text = str(where)
    if not is_url(text):
        return text
    text = _USERINFO.sub(r"\1***@", text)
    return re.sub(r"\?.*$", "?***", text)


def _secrets(where: str) -> list[str]:
    """The parts of a URL that :func:`shown` hides: its user info and query whole, and the password and query
    values in them; those of 4 characters or more (a shorter one would hide every match of it in a message, and
    is no credential), longest first."""
    if not is_url(where):
        return []
    userinfo = m[2] if (m := _USERINFO.match(where)) else ""
    query = where.split("?", 1)[1] if "?" in where else ""
    values = [v for pair in query.split("&") for v in pair.split("=", 1)[1:]]
    found = [userinfo, query, *userinfo.split(":", 1)[1:], *values]
    return sorted({part for part in found if len(part) >= 4}, key=len, reverse=True)


@contextmanager
def secrets_hidden(*places: str | Path) -> Iterator[None]:
    """Re-raise errors unchanged unless their text (or a chained error's) shows a secret part of one of the URLs
    ``places``; such an error becomes a :class:`StorageError` with those parts replaced by ``***``."""
    secrets = [s for where in places for s in _secrets(str(where))]
    try:
        yield
    except Exception as err:
        if not any(s in str(e) or s in repr(e.args) for e in exception_chain(err) for s in secrets):
            raise
        text = f"{type(err).__name__}: {err}"
        for secret in secrets:
            text = text.replace(secret, "***")
        raise StorageError(text) from None


class Place:
    """A file or folder at a local path or an fsspec URL, with what a run does to it. ``where`` is the path or
    URL itself (credentials included: pass it to other processes, never print it); ``str()`` shows it safely."""

    def __init__(self, where: str | Path | Place):
        where = where.where if isinstance(where, Place) else where
        self.where = str(where) if is_url(where) else Path(where)
        self.url = is_url(where)

    def __str__(self) -> str:
        return shown(self.where)

    def __repr__(self) -> str:
        return f"Place({shown(self.where)!r})"

    def __truediv__(self, name: str) -> Place:
        return Place(f"{self.where.rstrip('/')}/{name}" if self.url else self.where / name)

    @property
    def name(self) -> str:
        return self.where.split("?")[0].rstrip("/").rsplit("/", 1)[-1] if self.url else self.where.name

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def sibling(self, name: str) -> Place:
        """The place named ``name`` in the same folder."""
        if not self.url:
            return Place(self.where.with_name(name))
        base = self.where.split("?")[0].rstrip("/")
        return Place(f"{base[:len(base) - len(self.name)]}{name}")

    def _fs(self):
        """``(filesystem, path)`` of a URL, its listings read afresh: other processes write here too."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.where)
        fs.invalidate_cache()
        return fs, path

    # -- reading -----------------------------------------------------------------------------------------
    def exists(self) -> bool:
        if not self.url:
            return self.where.exists()
        fs, path = self._fs()
        return fs.exists(path)

    def is_dir(self) -> bool:
        if not self.url:
            return self.where.is_dir()
        fs, path = self._fs()
        return fs.isdir(path)

    def is_file(self) -> bool:
        if not self.url:
            return self.where.is_file()
        fs, path = self._fs()
        return fs.isfile(path)

    def read_text(self) -> str:
        if not self.url:
            return self.where.read_text()
        fs, path = self._fs()
        return fs.cat_file(path).decode("utf-8")

    def glob(self, pattern: str) -> list[Place]:
        """The entries of this folder whose names match ``pattern`` (none when it does not exist)."""
        if not self.url:
            return [Place(found) for found in self.where.glob(pattern)]
        fs, path = self._fs()
        return [self / found.rstrip("/").rsplit("/", 1)[-1] for found in fs.glob(f"{path.rstrip('/')}/{pattern}")]

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """What pyarrow reads this file from: the path, or an open fsspec file."""
        if not self.url:
            yield str(self.where)
            return
        fs, path = self._fs()
        with fs.open(path, "rb") as f:
            yield f

    def signature(self) -> list | None:
        """What tells this file apart from one written since: ``[size, modification time (ns)]`` of a local
        file, ``[size, fsspec's ukey]`` (an ETag on object stores) of a URL's; None when there is no file."""
        if not self.url:
            if not self.where.is_file():
                return None
            stat = self.where.stat()
            return [stat.st_size, stat.st_mtime_ns]
        fs, path = self._fs()
        if not fs.isfile(path):
            return None
        return [fs.size(path), str(fs.ukey(path))]

    def local_copy(self, folder: Path | None) -> Path:
        """This file or folder as a local path: itself when local, else downloaded into ``folder``."""
        if not self.url:
            return self.where
        fs, path = self._fs()
        Path(folder).mkdir(parents=True, exist_ok=True)
        target = Path(folder) / self.name
        fs.get(path, str(target), recursive=fs.isdir(path))
        return target

    # -- writing -----------------------------------------------------------------------------------------
    def mkdir(self) -> None:
        """Make this folder and those above it (nothing to make on an object store: folders are prefixes)."""
        if not self.url:
            self.where.mkdir(parents=True, exist_ok=True)
            return
        fs, path = self._fs()
        fs.makedirs(path, exist_ok=True)

    def remove(self) -> None:
        """Remove this file or folder tree, if there is one."""
        if not self.url:
            remove_path(self.where)
            return
        fs, path = self._fs()
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def rename(self, name: str) -> Place:
        """Rename this file to ``name`` in the same folder (on an object store: a copy, then a delete)."""
        target = self.sibling(name)
        if not self.url:
            Path(self.where).replace(target.where)
        else:
            fs, path = self._fs()
            fs.mv(path, target._fs()[1])
        return target

    def write(self, write: Callable[[Path], Any], *, clear: bool = False, staged: Path | None = None) -> None:
        """Write this file or folder whole or not at all: ``write(tmp)`` fills a local path, which replaces this
        place (``clear=True``: a folder here is removed first, see :func:`hf_prospector.utils.atomic_write`).
        For a URL, ``tmp`` is ``staged`` (default: in a temporary folder, removed after), uploaded beside this
        place, then moved here; a ``staged`` path is left to the caller, e.g. to load what was written. A file on
        an object store (:data:`OBJECT_STORES`) is put in its place at once: the put is atomic there, and a move
        would be a copy and a delete."""
        if not self.url:
            atomic_write(self.where, write, clear=clear)
            return
        import uuid

        with tempfile.TemporaryDirectory(prefix="hf_prospector-") as folder:
            local = Path(staged) if staged is not None else Path(folder) / self.name
            write(local)
            fs, path = self._fs()
            fs.makedirs(posixpath.dirname(path.rstrip("/")), exist_ok=True)  # as save_to_disk does (nothing on S3)
            protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
            if local.is_file() and protocols & OBJECT_STORES:
                if clear and fs.isdir(path):
                    fs.rm(path, recursive=True)
                fs.put_file(str(local), path)
                return
            beside = self.sibling(f".{self.name}.{uuid.uuid4().hex[:8]}.tmp")
            _, tmp = beside._fs()
            try:
                fs.put(str(local), tmp, recursive=local.is_dir())
                if clear:
                    self.remove()
                fs.mv(tmp, path, recursive=local.is_dir())
            finally:
                beside.remove()  # still there only when something failed
