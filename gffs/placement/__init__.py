"""Placement: which backends receive a new chunk."""

from gffs.placement.health import Health
from gffs.placement.policy import FlowPolicy, Placement

__all__ = ["FlowPolicy", "Health", "Placement"]
