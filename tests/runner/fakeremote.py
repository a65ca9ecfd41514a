"""A filesystem outside the local path namespace, for URL outputs: ``fakeremote://a/b`` is the folder ``a/b`` under
the root ``$FAKEREMOTE_ROOT``, read and written only through fsspec (a ``Path`` of the URL would land elsewhere:
``./fakeremote:/a/b``). :func:`register` makes the protocol known in a process; Ray workers call it as their
``worker_process_setup_hook``."""

import os

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "fakeremote"
ROOT = "FAKEREMOTE_ROOT"


class FakeRemoteFileSystem(DirFileSystem):
    protocol = PROTOCOL
    cachable = False  # the root is read from the environment whenever a URL is opened

    def __init__(self, **kwargs):
        super().__init__(path=os.environ[ROOT], fs=LocalFileSystem(), **kwargs)


def register() -> None:
    fsspec.register_implementation(PROTOCOL, FakeRemoteFileSystem, clobber=True)
