"""The LMDB index: namespace, file block lists, chunk table."""

from gffs.index.chunkmap import ChunkMap
from gffs.index.env import Index
from gffs.index.namespace import ROOT_INO, Namespace

__all__ = ["ChunkMap", "Index", "Namespace", "ROOT_INO"]
