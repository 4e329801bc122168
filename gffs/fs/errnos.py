"""The one place where failures of the layers below become the errno a caller sees.

The index raises its own typed errors (gffs/index/errors.py); every Filesystem
method, and the FUSE handlers as the last line, turn them into FsError here.
"""

from __future__ import annotations

import errno
import functools
import inspect
from typing import Any, Callable, TypeVar

from gffs.errors import FsError
from gffs.index.errors import (IndexFailure, IndexFull, IndexUnwritable, InvalidName, NameTooLong,
                               NotASymlink, NotFound)

# most specific first: NameTooLong is an InvalidName
ERRNO_OF: tuple[tuple[type[IndexFailure], int], ...] = (
    (NotFound, errno.ENOENT),
    (NameTooLong, errno.ENAMETOOLONG),
    (InvalidName, errno.EINVAL),
    (NotASymlink, errno.EINVAL),
    (IndexFull, errno.ENOSPC),
    (IndexUnwritable, errno.EIO),
)


def fs_error(exc: IndexFailure) -> FsError:
    """The FsError a caller sees for an index failure (EIO for one not in the table)."""
    code = next((code for kind, code in ERRNO_OF if isinstance(exc, kind)), errno.EIO)
    return FsError(code, str(exc))


T = TypeVar("T", bound=type)


def _translating(func: Callable) -> Callable:
    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await func(*args, **kwargs)
            except IndexFailure as exc:
                raise fs_error(exc) from exc
        return run_async
    if inspect.isgeneratorfunction(func):
        @functools.wraps(func)
        def run_generator(*args: Any, **kwargs: Any) -> Any:
            try:
                return (yield from func(*args, **kwargs))
            except IndexFailure as exc:
                raise fs_error(exc) from exc
        return run_generator

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except IndexFailure as exc:
            raise fs_error(exc) from exc
    return run


def index_errors_as_errno(cls: T) -> T:
    """Class decorator: every public method of *cls* (its bases' too) raises FsError, never
    an IndexFailure. Private methods keep the typed errors for the code inside."""
    for name in dir(cls):
        member = inspect.getattr_static(cls, name)
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, _translating(member))
    return cls
