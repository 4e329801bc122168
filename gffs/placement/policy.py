"""Placement policy: which backends hold a chunk, per flow.

A policy names the backends a flow's chunks may live on, how many copies to
keep, and weights that spread chunks over those backends. It is evaluated when
a chunk is written (and by repair/rebalance later) and is never baked into a
chunk's name, so changing it moves data only when asked.

Choice of backends for a chunk: weighted rendezvous hashing of the chunk hash
over the policy's backends, skipping backends that are down or full. The same
chunk goes to the same backends while the policy is unchanged.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from gffs.placement.health import Health
from gffs_backends.base import Backend

# Name of the staging area's copies in chunk records (gffs/chunks/staging.py): a local
# disk that is no configured backend (config names cannot start with "~").
STAGING = "~staging"


@dataclass
class FlowPolicy:
    copies: int
    backends: list[str]
    weights: dict[str, float] = field(default_factory=dict)


def _score(digest: bytes, backend: str, weight: float) -> float:
    """Weighted rendezvous score: highest wins; proportional to weight on average."""
    h = hashlib.blake2b(digest + backend.encode(), digest_size=8).digest()
    u = (int.from_bytes(h, "big") + 1) / (2 ** 64 + 1)
    return -weight / math.log(u)


class Placement:
    def __init__(self, backends: list[Backend], copies: int = 1, *,
                 flows: dict[str, FlowPolicy] | None = None,
                 weights: dict[str, float] | None = None,
                 default_backends: list[str] | None = None,
                 health: Health | None = None) -> None:
        if not backends:
            raise ValueError("placement needs at least one backend")
        self.by_name = {b.name: b for b in backends}
        self.backends = backends
        # a read-only source (an imported flow's IPFS share) never receives chunks
        names = default_backends or [b.name for b in backends if not b.read_only]
        self.default = FlowPolicy(copies, names, dict(weights or {}))
        self.flows = dict(flows or {})
        for name, policy in [("default", self.default), *self.flows.items()]:
            unknown = [b for b in policy.backends if b not in self.by_name]
            if unknown:
                raise ValueError(f"placement for {name}: unknown backend {unknown[0]!r}")
            if not 1 <= policy.copies <= len(policy.backends):
                raise ValueError(f"placement for {name}: copies must be between 1 and "
                                 f"{len(policy.backends)}, not {policy.copies}")
            read_only = [b for b in policy.backends if self.by_name[b].read_only]
            if read_only:
                raise ValueError(f"placement for {name}: backend {read_only[0]!r} is "
                                 "read-only (a share source) and cannot hold copies")
            trusted = [b for b in policy.backends if self.by_name[b].trusted]
            if len(trusted) < policy.copies:
                raise ValueError(f"placement for {name}: {policy.copies} copies need as many "
                                 f"trusted backends, it has {len(trusted)} (untrusted: "
                                 f"{', '.join(b for b in policy.backends if b not in trusted)})")
        self.health = health or Health()
        self.draining: set[str] = set()  # backends being emptied: no new copies go there

    def trusted(self, name: str) -> bool:
        """Whether a copy on this backend counts toward a policy's copies.

        Backend.trusted says so (IPFS: only when pinned on a node you control);
        unknown backends do not count.
        """
        b = self.by_name.get(name)
        return b is not None and b.trusted

    @property
    def copies(self) -> int:
        return self.default.copies

    def policy_for(self, flow: str | None) -> FlowPolicy:
        return self.flows.get(flow or "", self.default)

    def ranked(self, digest: bytes, flow: str | None = None) -> list[Backend]:
        """The policy's backends for this chunk, best first (ignoring health)."""
        policy = self.policy_for(flow)
        names = [n for n in policy.backends if n not in self.draining] or policy.backends
        order = sorted(names,
                       key=lambda n: _score(digest, n, policy.weights.get(n, 1.0)), reverse=True)
        return [self.by_name[n] for n in order]

    def targets(self, size: int, digest: bytes = b"", flow: str | None = None) -> list[Backend]:
        """Backends a new chunk is written to before close() returns.

        The first *copies* healthy ones by rank, minus *deferred* backends
        (slow archives such as Drive): their copies are made by the repair
        queue in the background.
        """
        policy = self.policy_for(flow)
        ranked = self.ranked(digest, flow)
        healthy = [b for b in ranked if self.health.writable(b.name)]
        return [b for b in (healthy or ranked)[: policy.copies] if not self.deferred(b.name)]

    def wanted(self, digest: bytes, flow: str | None = None) -> list[str]:
        """Where the policy wants this chunk's copies: best-ranked backends until
        *copies* trusted ones are in (an untrusted one ranked above them is kept too)."""
        out, counted = [], 0
        want = self.policy_for(flow).copies
        for backend in self.ranked(digest, flow):
            if counted >= want:
                break
            out.append(backend.name)
            counted += self.trusted(backend.name)
        return out

    def drain_problems(self, draining: set[str]) -> list[str]:
        """Policies that could not keep their copy count without *draining* backends."""
        problems = []
        for name, policy in [("default", self.default), *self.flows.items()]:
            left = [b for b in policy.backends if b not in draining and self.trusted(b)]
            if len(left) < policy.copies:
                problems.append(f"placement for {name} needs {policy.copies} trusted "
                                f"backends and would keep {len(left)} ({', '.join(left) or 'none'})")
        return problems

    def deferred(self, name: str) -> bool:
        b = self.by_name.get(name)
        return b is not None and b.deferred

    def fallbacks(self, exclude: set[str]) -> list[Backend]:
        """Other writable, non-deferred backends, local first: where data goes when targets fail."""
        rest = [b for b in self.backends if b.name not in exclude and not self.deferred(b.name)
                and self.health.writable(b.name) and not b.read_only]
        return sorted(rest, key=lambda b: not self.is_local(b.name))

    def is_local(self, name: str) -> bool:
        """A local disk (a local backend, also when wrapped, or the staging area)."""
        b = self.by_name.get(name)
        return name == STAGING or (b is not None and b.is_local)

    def read_order(self, names: list[str]) -> list[str]:
        """Copies to try for a read: healthy first, local disks before remote stores."""
        return sorted(names, key=lambda n: (not self.health.available(n), not self.is_local(n)))

