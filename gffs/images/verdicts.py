"""Which analysis results say something about the machine rather than the image.

Apart from gffs/images/analyze.py so the daemon can judge results without loading
Pillow and its plugins (about 0.3 s of every mount): only the analysis worker
process decodes images.
"""

from __future__ import annotations

OUT_OF_MEMORY = "out of memory while reading the image"
"""The ``error`` of an analysis that lacked memory: a fact about the machine, not the file."""


def is_resource_failure(facts: dict[str, str]) -> bool:
    """Facts that say the analysis lacked memory: a verdict on the machine, not on the bytes."""
    return facts.get("error") == OUT_OF_MEMORY


def may_be_resource_failure(facts: dict[str, str]) -> bool:
    """A decoder failure that can also be a lack of memory in disguise: libheif says
    "Memory allocation error", "Internal error (unexpected C++ exception)" or "did not give
    a decompressed image" when its allocations fail. Only a decoder with room tells."""
    error = facts.get("error", "")
    return (error == OUT_OF_MEMORY or error.startswith("cannot read image")
            or (error.startswith("corrupt ") and " data (" in error))
