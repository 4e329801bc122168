"""How this fixture was made (kept for the record; the point is that it is NOT remade).

An index backup written by the gffs that cut every record in Python (before the
piece cache), from a store of 40 small files with xattrs, one deleted and one
renamed. Run once with that gffs first on sys.path:

    PYTHONPATH=<old gffs checkout> python tests/data/index-backup-v1/make.py

It leaves ``disk/`` (the local backend: chunks and ``meta/index/...``) and
``records.json`` (every record of every table, hex) next to this file; the test
restores ``disk/`` with the current gffs and compares with ``records.json``.
"""

import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import trio

from gffs.config import load_config
from gffs.fs.filesystem import Caller, Filesystem
from gffs.index import ROOT_INO
from gffs.index.env import DB_NAMES
from gffs.maintenance.backup import backup_index
from gffs.maintenance.progress import Progress
from gffs.store import Store

HERE = Path(__file__).resolve().parent
USER = Caller(1000, 1000)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    cfg_path = tmp / "gffs.toml"
    cfg_path.write_text(f"""
[store]
data_dir = "{tmp / 'data'}"
analyze_images = false
index_backup_to = ["disk"]

[backends.disk]
type = "local"
path = "{tmp / 'disk'}"

[placement]
copies = 1
backends = ["disk"]
""")
    os.chmod(cfg_path, 0o600)
    store = Store(load_config(cfg_path), "fixture")
    rnd = random.Random(7)

    async def fill() -> None:
        fs = Filesystem(store.index, store.chunks, analyze_images=False)
        await fs.start(1000, 1000)
        d, _ = fs.mkdir(ROOT_INO, b"flow", 0o755, USER)
        for i in range(40):
            fh, ino, _ = fs.create(d, f"img-{i:02d}.jpg".encode(), 0o644, os.O_RDWR, USER)
            await fs.write(fh, 0, rnd.randbytes(rnd.randint(50, 400)))
            await fs.release(fh)
            fs.setxattr(ino, b"user.xdg.tags", f"tag{i % 5}".encode())
        fs.unlink(d, b"img-03.jpg")
        fs.rename(d, b"img-04.jpg", d, b"renamed.jpg")

    trio.run(fill)
    result = trio.run(lambda: backup_index(store, Progress()))
    assert result["exit_code"] == 0, result
    with store.index.read() as txn:
        recs = {t: [[bytes(k).hex(), bytes(v).hex()] for k, v in txn.cursor(db=store.index.db[t])]
                for t in DB_NAMES}
    store.close()
    shutil.rmtree(HERE / "disk", ignore_errors=True)
    shutil.copytree(tmp / "disk", HERE / "disk")
    (HERE / "records.json").write_text(json.dumps(recs, indent=0, sort_keys=True) + "\n")
    shutil.rmtree(tmp)
    print("fixture written from", sys.modules["gffs"].__file__)


if __name__ == "__main__":
    main()
