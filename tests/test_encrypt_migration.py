"""Turning ``encrypt`` on for a local disk that holds plaintext chunks: rebalance seals them.

One backend, one copy: nothing else could serve a chunk the wrapper failed to
find. After the config change the mount reads the plaintext chunks, gc keeps
them (they are the chunks' objects, not strays), rebalance rewrites every one
sealed and re-seals the old index backups, and a scan of every object on the
disk finds neither a marker string nor a window of the files' bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gffs.crypto import keyfile
from test_key_rotate import chunk_ids, key_doc
from test_mount_crypt import admin

MARKER = "OKAPI-MARKER-7d13aa"


def write_config(tmp: Path, encrypt: bool) -> Path:
    cfg = tmp / "gffs.toml"
    cfg.write_text(f"""
[store]
analyze_images = false

[backends.a]
type = "local"
path = "{tmp / 'a'}"
encrypt = {str(encrypt).lower()}

[placement]
copies = 1
backends = ["a"]
""")
    return cfg


def every_object(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_encrypt_on_a_plaintext_backend_migrates_through_rebalance(tmp_path, mount_factory):
    cfg = write_config(tmp_path, encrypt=False)
    m = mount_factory(config=cfg)
    files = {f"{MARKER}-{i}.bin": os.urandom(150_000 * (i + 1)) for i in range(4)}
    files["notes.txt"] = ((MARKER + "\n") * 30_000).encode()      # compressible: zstd
    (m.path / "flow").mkdir()
    for n, data in files.items():
        (m.path / "flow" / n).write_bytes(data)
    m.unmount()                                   # and an index backup, in the clear
    plain_ids = set(chunk_ids(m.data_dir))
    assert any(n.endswith(i) for n in every_object(tmp_path / "a") for i in plain_ids)

    write_config(tmp_path, encrypt=True)          # was refused before: now a migration
    m.mount()
    for n, data in files.items():                 # plaintext copies read through the wrapper
        assert (m.path / "flow" / n).read_bytes() == data, n
    files["later"] = os.urandom(400_000)          # sealed from the start
    (m.path / "flow" / "later").write_bytes(files["later"])
    res = admin(cfg, m.data_dir, "gc", "--min-age", "0", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["unreferenced_deleted"] == 0   # plaintext copies are no strays
    res = admin(cfg, m.data_dir, "rebalance", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    sealing = json.loads(res.stdout)["sealing"]
    assert sealing["migrated"] == ["a"] and sealing["copies_rewritten"] == len(plain_ids)
    assert sealing["backup_objects_resealed"] >= 2
    m.unmount()

    sid, _doc = key_doc(m.data_dir)
    key = keyfile.read_key(sid)
    ids = chunk_ids(m.data_dir)
    sealed_names = {key.chunk_name(i): i for i in ids}
    objects = every_object(tmp_path / "a")
    windows = [d[j:j + 32] for d in files.values() for j in range(0, len(d) - 32, 20_000)]
    for name, raw in objects.items():
        assert MARKER not in name and MARKER.encode() not in raw, name
        assert not any(i in name or bytes.fromhex(i) in raw for i in ids), name
        assert not any(w in raw for w in windows), name
        if name.startswith("chunks/"):
            assert key.open_chunk(sealed_names[Path(name).name], raw), name
    res = admin(cfg, m.data_dir, "fsck", "--verify-data", "--min-age", "0", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    m.mount()
    for n, data in files.items():
        assert (m.path / "flow" / n).read_bytes() == data, n
