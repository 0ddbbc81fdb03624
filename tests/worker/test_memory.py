"""worker.memory: freed heap goes back to the kernel between a pool process's tasks."""

from __future__ import annotations

import platform

from worker.memory import release_memory, rss_mib


def test_freed_heap_between_live_blocks_leaves_the_resident_set_after_release_memory() -> None:
    before = rss_mib()
    blocks = [bytes(1000) + bytes([i % 256]) for i in range(250_000)]  # ~250 MiB of malloc'd blocks
    kept = blocks[::64]  # survivors scattered through the heap: glibc cannot just lower its top
    grown = rss_mib()
    del blocks
    trimmed = release_memory()
    after = rss_mib()
    assert len(kept) and grown - before > 150
    if platform.libc_ver()[0] == "glibc":
        assert trimmed
        assert after - before < (grown - before) / 2
