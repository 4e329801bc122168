"""Placement policy: the backends a new chunk is written to.

Today a store has one copy count for everything and writes each new chunk to
the first *copies* healthy backends in configuration order. The policy is a
value in the index's world, not baked into chunk names, so a later rebalance
can move data without renaming anything.
"""

from __future__ import annotations

from gffs_backends.base import Backend


class Placement:
    def __init__(self, backends: list[Backend], copies: int = 1) -> None:
        if not backends:
            raise ValueError("placement needs at least one backend")
        if copies < 1 or copies > len(backends):
            raise ValueError(f"copies must be between 1 and {len(backends)}, not {copies}")
        self.backends = backends
        self.copies = copies

    def targets(self, size: int) -> list[Backend]:
        """Backends that should hold a new chunk of *size* bytes."""
        return self.backends[: self.copies]
