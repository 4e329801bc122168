"""The index's own failures: what went wrong in index terms, no errno.

The filesystem maps them to the errno a caller sees in one place
(gffs/fs/errnos.py); gffs-admin reports them as they are.
"""

from __future__ import annotations


class IndexFailure(Exception):
    """Base of every failure the index reports."""


class NotFound(IndexFailure):
    """No such inode, or no such entry in a directory."""


class InvalidName(IndexFailure):
    """A name no directory entry may have (empty, '.', '..', or with a '/')."""


class NameTooLong(InvalidName):
    """A name longer than NAME_MAX bytes."""


class NotASymlink(IndexFailure):
    """A symlink target was asked of an inode that is not a symlink."""


class IndexFull(IndexFailure):
    """The index's disk (or LMDB map, or journal) has no room for the change."""


class IndexUnwritable(IndexFailure):
    """The index could not be read or written (an I/O error)."""
