"""S3 backend: which bucket a key goes to (weighted rendezvous hashing) and where to look.

Every bucket scores ``-weight / ln(h(bucket, key))`` with ``h`` uniform in (0, 1); the
highest score wins. That spreads keys in proportion to the weights, sends a key to the
same bucket while the weights stay unchanged, and moves only the keys that must move
when a weight changes. Pure functions of the weights: no boto3, no I/O.
"""

from __future__ import annotations

import hashlib
import math


def meta_prefix(prefix: str) -> str:
    """Where metadata objects go for a chunk *prefix*: beside it, never under a chunk key."""
    if not prefix:
        return "gffs-meta/"
    return (prefix[:-1] if prefix.endswith("/") else prefix) + "-meta/"



def score(bucket: str, weight: float, key: str) -> float:
    """Weighted rendezvous score of *bucket* for *key* (higher wins)."""
    if weight <= 0:
        return 0.0
    h = int.from_bytes(hashlib.sha256(f"{bucket}\0{key}".encode()).digest()[:8], "big")
    u = (h + 0.5) / 2.0 ** 64              # uniform in (0, 1), never 0 or 1
    return -weight / math.log(u)


def choose_bucket(weights: dict[str, float], key: str) -> str:
    """The bucket a new object with *key* goes to under *weights*."""
    return max(weights, key=lambda b: (score(b, weights[b], key), b))


def search_order(weights: dict[str, float], key: str, locator: str) -> list[str]:
    """Buckets to look in for *key*: the recorded *locator* first, then rendezvous order."""
    order = sorted(weights, key=lambda b: (score(b, weights[b], key), b), reverse=True)
    if locator in weights:
        order.remove(locator)
        order.insert(0, locator)
    return order
