"""Sharing flows peer to peer over IPFS: publish, import, follow, pin (docs/SHARING.md)."""
