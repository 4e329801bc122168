"""Run `gffs-admin` with the process killed (SIGKILL) at one step of a chunk move.

    python -m tests.rebalance_crasher STEP N -- gffs-admin args...

STEP names the point in LocalBackend's calls where the move dies on its Nth
call: put-before (intent written, nothing stored), put-after (stored, not
verified), verify (read back, not recorded), delete-before (location forgotten,
object still there), delete-after (object gone, intent row still there). STEP "slow" kills nothing
and makes every put take 0.2 s (for interrupting a run by hand).
"""

from __future__ import annotations

import os
import signal
import sys

import trio

from gffs.cli import admin
from gffs_backends.local import LocalBackend


def main() -> None:
    step, nth = sys.argv[1], int(sys.argv[2])
    argv = sys.argv[sys.argv.index("--") + 1:]
    calls = {"n": 0}

    def due() -> bool:
        calls["n"] += 1
        return calls["n"] >= nth

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    put, get, delete = LocalBackend.put, LocalBackend.get, LocalBackend.delete

    async def put_(self, key, data):
        if step == "put-before" and due():
            die()
        if step == "slow":
            await trio.sleep(0.2)
        locator = await put(self, key, data)
        if step == "put-after" and due():
            die()
        return locator

    async def get_(self, key, locator=""):
        data = await get(self, key, locator)
        # the mover reads the source, then reads the destination back: count the latter
        if step == "verify" and self.name != "a" and due():
            die()
        return data

    async def delete_(self, key, locator=""):
        if step == "delete-before" and due():
            die()
        await delete(self, key, locator)
        if step == "delete-after" and due():
            die()

    LocalBackend.put, LocalBackend.get, LocalBackend.delete = put_, get_, delete_
    sys.exit(admin.main(argv))


if __name__ == "__main__":
    main()
