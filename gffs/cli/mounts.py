"""Moved to gffs/mounts.py (daemon and nft need it too, below the cli); kept for callers."""

from gffs.mounts import MountEntry, find_mount, gffs_data_dir, mounts

__all__ = ["MountEntry", "find_mount", "gffs_data_dir", "mounts"]
