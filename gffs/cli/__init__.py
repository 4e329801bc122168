"""Command-line entry points: gffs, gffs-admin, mount.gffs."""
