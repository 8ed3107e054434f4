"""Row ids: unique, UUIDv7-shaped (time first), and never repeated across fork()."""

from __future__ import annotations

import os
import threading
import time
import uuid

from hub.domain import new_id


def test_ids_are_unique_uuid7_hex_in_time_order() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for each in ids[:100]:
        assert len(each) == 32
        parsed = uuid.UUID(each)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    stamps = [int(each[:12], 16) for each in ids]
    assert before <= stamps[0] and stamps[-1] <= after
    assert stamps == sorted(stamps)  # keys made one after another land next to each other


def test_threads_never_share_an_id() -> None:
    taken: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        into.extend(new_id() for _ in range(5_000))

    threads = [threading.Thread(target=draw, args=(each,)) for each in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for each in taken for i in each]
    assert len(set(everything)) == len(everything)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_id()  # the pool now holds unread randomness the child must not reuse
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report a few ids and leave at once
        os.close(read_end)
        os.write(write_end, "".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_ids = {new_id() for _ in range(10)}
    assert len(child_ids) == 10
    assert not child_ids & parent_ids
