"""Placement: which backends receive a new chunk."""

from gffs.placement.policy import Placement

__all__ = ["Placement"]
