"""Client-side encryption of chunks, their names and index backups (docs/ENCRYPTION.md).

``seal`` is the construction (subkeys, keyed names, AEAD, padding), ``keyfile``
the store key on disk (optionally under a passphrase), ``backend`` the wrapper
that gives any Backend encrypted objects, ``setup`` where a store finds its key
and wraps the backends its config marks ``encrypt = true``.
"""
