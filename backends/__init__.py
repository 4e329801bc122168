"""Storage backends for gffs (installed as ``gffs_backends``).

Every backend implements :class:`gffs_backends.base.Backend` and registers under
the ``gffs.backends`` entry-point group, so third-party backends plug in the
same way the built-in ones do.
"""

from gffs_backends.base import (Backend, BackendError, BackendFull, BackendUnavailable,
                                Capacity, ObjectMissing, load_backend_class)

__all__ = ["Backend", "BackendError", "BackendFull", "BackendUnavailable", "Capacity",
           "ObjectMissing", "load_backend_class"]
