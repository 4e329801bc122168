"""Group commit without FUSE: child transactions, read-your-writes, the journal after a kill."""

from __future__ import annotations

import errno
import shutil
import threading
from pathlib import Path

import pytest
import trio

from gffs.errors import FsError
from gffs.index.errors import IndexUnwritable
from gffs.index import Index
from gffs.index.env import JOURNAL_NAME
from gffs.index.journal import BOOT_ID_LEN, HEADER, MAGIC


async def _no_chunks() -> None:
    return None


def _meta(index: Index) -> object:
    return index.db["meta"]


def _killed_copy(index: Index, dest: Path) -> Path:
    """What a kill -9 leaves right now: the committed data file plus the journal."""
    dest.mkdir()
    shutil.copy(index.path / "data.mdb", dest / "data.mdb")
    shutil.copy(index.path / JOURNAL_NAME, dest / JOURNAL_NAME)
    return dest


def test_child_abort_and_read_your_writes(tmp_path: Path) -> None:
    index = Index(tmp_path / "idx")

    async def main() -> None:
        async with index.grouped(_no_chunks):
            with index.write() as txn:
                txn.put(b"a", b"1", db=_meta(index))
            with pytest.raises(FsError):
                with index.write() as txn:
                    txn.put(b"b", b"2", db=_meta(index))
                    raise FsError(errno.EEXIST)
            with index.read() as txn:
                assert txn.get(b"a", db=_meta(index)) == b"1"   # read-your-writes
                assert txn.get(b"b", db=_meta(index)) is None   # the failed request left nothing
            with index.read_committed() as txn:                 # not durable yet
                assert txn.get(b"a", db=_meta(index)) is None
            # another thread reads the committed state, not the open group
            seen = await trio.to_thread.run_sync(
                lambda: bytes(index.read().get(b"a", b"-", db=_meta(index))))
            assert seen == b"-"
            await index.durable()
            with index.read_committed() as txn:
                assert txn.get(b"a", db=_meta(index)) == b"1"

    trio.run(main)
    index.close()


def test_nested_writes_are_one_atomic_change(tmp_path: Path) -> None:
    index = Index(tmp_path / "idx")

    async def main() -> None:
        async with index.grouped(_no_chunks):
            with pytest.raises(RuntimeError):
                with index.write() as outer:
                    outer.put(b"outer", b"1", db=_meta(index))
                    with index.write() as inner:
                        inner.put(b"inner", b"1", db=_meta(index))
                    with index.read() as txn:   # inside a child: reads the child
                        assert txn.get(b"inner", db=_meta(index)) == b"1"
                    raise RuntimeError("request fails after the inner block")
            with index.write() as outer:
                with index.write() as inner:
                    inner.put(b"inner2", b"2", db=_meta(index))
            with index.read() as txn:
                assert txn.get(b"outer", db=_meta(index)) is None
                assert txn.get(b"inner", db=_meta(index)) is None
                assert txn.get(b"inner2", db=_meta(index)) == b"2"

    trio.run(main)
    index.close()
    reopened = Index(tmp_path / "idx")   # the final commit at the end of grouped()
    with reopened.read() as txn:
        assert txn.get(b"inner2", db=reopened.db["meta"]) == b"2"
    assert (tmp_path / "idx" / JOURNAL_NAME).stat().st_size == 0
    reopened.close()


def test_journal_replay_after_kill(tmp_path: Path) -> None:
    index = Index(tmp_path / "idx")
    copy = tmp_path / "killed"

    async def main() -> None:
        async with index.grouped(_no_chunks):
            with index.write() as txn:
                txn.put(b"early", b"1", db=_meta(index))
            await index.durable()
            with index.write() as txn:
                txn.put(b"late", b"2", db=_meta(index))
                txn.delete(b"early", db=_meta(index))
            _killed_copy(index, copy)

    trio.run(main)
    index.close()
    survivor = Index(copy)
    with survivor.read() as txn:
        assert txn.get(b"late", db=survivor.db["meta"]) == b"2"
        assert txn.get(b"early", db=survivor.db["meta"]) is None
    survivor.close()
    again = Index(copy)   # replayed once, journal empty: opening again changes nothing
    with again.read() as txn:
        assert txn.get(b"late", db=again.db["meta"]) == b"2"
    assert (copy / JOURNAL_NAME).stat().st_size == 0
    again.close()


def test_journal_of_another_boot_is_discarded(tmp_path: Path) -> None:
    index = Index(tmp_path / "idx")
    copy = tmp_path / "power-cut"

    async def main() -> None:
        async with index.grouped(_no_chunks):
            with index.write() as txn:
                txn.put(b"durable", b"1", db=_meta(index))
            await index.durable()
            with index.write() as txn:
                txn.put(b"not-durable", b"2", db=_meta(index))
            _killed_copy(index, copy)

    trio.run(main)
    index.close()
    journal = copy / JOURNAL_NAME
    data = bytearray(journal.read_bytes())
    assert data[:len(MAGIC)] == MAGIC
    data[len(MAGIC):HEADER.size] = b"f" * BOOT_ID_LEN   # written before a reboot
    journal.write_bytes(bytes(data))
    after = Index(copy)
    with after.read() as txn:
        assert txn.get(b"durable", db=after.db["meta"]) == b"1"
        assert txn.get(b"not-durable", db=after.db["meta"]) is None
    after.close()


def test_failed_commit_keeps_changes_and_retries(tmp_path: Path) -> None:
    index = Index(tmp_path / "idx")
    fail = {"n": 1}

    async def flaky_chunks() -> None:
        if fail["n"]:
            fail["n"] -= 1
            raise OSError(errno.EIO, "chunk fsync failed (injected)")

    async def main() -> None:
        async with index.grouped(flaky_chunks):
            with index.write() as txn:
                txn.put(b"k", b"v", db=_meta(index))
            with pytest.raises(IndexUnwritable):
                await index.durable()
            with index.read() as txn:       # still there, still pending
                assert txn.get(b"k", db=_meta(index)) == b"v"
            await index.durable()
            with index.read_committed() as txn:
                assert txn.get(b"k", db=_meta(index)) == b"v"

    trio.run(main)
    index.close()


def test_commits_happen_without_being_asked(tmp_path: Path) -> None:
    index = Index(tmp_path / "idx")

    async def main() -> None:
        async with index.grouped(_no_chunks):
            with index.write() as txn:
                txn.put(b"k", b"v", db=_meta(index))
            with trio.fail_after(30):
                while True:
                    with index.read_committed() as txn:
                        if txn.get(b"k", db=_meta(index)) == b"v":
                            break
                    await trio.sleep(0.1)

    trio.run(main)
    index.close()


def test_writes_from_another_thread_are_refused(tmp_path: Path) -> None:
    index = Index(tmp_path / "idx")
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with index.write() as txn:
                txn.put(b"x", b"1", db=_meta(index))
        except BaseException as exc:
            errors.append(exc)

    async def main() -> None:
        async with index.grouped(_no_chunks):
            t = threading.Thread(target=writer)
            t.start()
            await trio.to_thread.run_sync(t.join)

    trio.run(main)
    index.close()
    assert errors and isinstance(errors[0], RuntimeError)


def test_ungated_index_use_while_chunks_sync_does_not_deadlock(tmp_path: Path) -> None:
    """Code that touches the index without awaiting available() (a chunk store lookup
    in a flush) while a commit syncs chunk files must neither hang nor be lost."""
    index = Index(tmp_path / "idx")
    syncing = trio.Event()

    async def slow_chunks() -> None:
        syncing.set()
        await trio.sleep(0.05)

    async def main() -> None:
        async with index.grouped(slow_chunks):
            with index.write() as txn:
                txn.put(b"k0", b"v", db=_meta(index))
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(index.durable)
                    await syncing.wait()
                    for i in range(1, 20):      # reads and writes during the commit
                        with index.read() as txn:
                            assert txn.get(b"k0", db=_meta(index)) == b"v"
                        with index.write() as txn:
                            txn.put(b"k%d" % i, b"v", db=_meta(index))
                        await trio.sleep(0.01)
                await index.durable()
            with index.read_committed() as txn:
                assert txn.get(b"k19", db=_meta(index)) == b"v"

    trio.run(main)
    index.close()



def test_durable_soon_waits_for_the_periodic_commit_and_shares_it(tmp_path: Path) -> None:
    """Many waiters (staged copies to delete) share one commit; none forces its own."""
    index = Index(tmp_path / "idx")
    syncs = 0

    async def count_syncs() -> None:
        nonlocal syncs
        syncs += 1

    async def main() -> None:
        async with index.grouped(count_syncs):
            async def change_then_wait(i: int) -> None:
                await trio.sleep(i * 0.01)      # uploads finish one after another
                with index.write() as txn:
                    txn.put(b"k%d" % i, b"v", db=_meta(index))
                await index.durable_soon()
                with index.read_committed() as txn:      # durable when it returns
                    assert txn.get(b"k%d" % i, db=_meta(index)) == b"v"

            before = syncs
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(change_then_wait, i)
            # one periodic commit (two chunk syncs each) served all twenty; forcing one
            # each, as durable() does, would have synced chunks 20 times or more
            assert 0 < syncs - before <= 6

    trio.run(main)
