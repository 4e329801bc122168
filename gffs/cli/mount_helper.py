"""`mount.gffs` — what mount(8) runs for an /etc/fstab line of type gffs:

    gffs  /mnt/gloflow  gffs  config=/etc/gffs/gffs.toml,allow_other  0  0

mount(8) calls `mount.gffs SOURCE MOUNTPOINT -o OPTIONS`. SOURCE "gffs" means
the default store; an absolute path is taken as the store directory. The
options config= and data_dir= are ours, the rest go to FUSE.
"""

from __future__ import annotations

import sys

from gffs.cli.main import main as gffs_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: mount.gffs SOURCE MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 1
    source, mountpoint, rest = argv[0], argv[1], argv[2:]
    options: list[str] = []
    i = 0
    while i < len(rest):
        if rest[i] == "-o" and i + 1 < len(rest):
            options += rest[i + 1].split(",")
            i += 2
        else:
            i += 1  # -n, -v, -s ... from mount(8): nothing to do
    args = ["mount", mountpoint]
    fuse_opts = []
    for opt in options:
        if opt.startswith("config="):
            args += ["--config", opt.split("=", 1)[1]]
        elif opt.startswith("data_dir="):
            args += ["--data-dir", opt.split("=", 1)[1]]
        elif opt:
            fuse_opts.append(opt)
    if source.startswith("/") and not any(a == "--data-dir" for a in args):
        args += ["--data-dir", source]
    if fuse_opts:
        args += ["-o", ",".join(fuse_opts)]
    return gffs_main(args)


if __name__ == "__main__":
    sys.exit(main())
