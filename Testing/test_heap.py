"""``heap.retained_heap``: inside it glibc serves large blocks from the heap and keeps freed ones;
outside it, glibc's defaults again and the kept memory handed back (Linux with glibc only)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from CervixAutoSegLib.heap import _libc, retained_heap

pytestmark = pytest.mark.skipif(_libc() is None, reason="glibc's allocator only (macOS, Windows: nothing to test)")

PROBE = textwrap.dedent("""
    import ctypes, json
    from CervixAutoSegLib.heap import retained_heap

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    BLOCK = 64 << 20

    def allocate():
        '''Bytes of a fresh 64 MiB block that came from mmap, and the heap's size with the block freed.'''
        before = libc.mallinfo2().hblkhd
        block = libc.malloc(BLOCK)
        mapped = libc.mallinfo2().hblkhd - before
        libc.free(block)
        return mapped, libc.mallinfo2().arena

    facts = {"default": allocate()}
    with retained_heap() as outer:
        facts["outer"] = allocate()
        with retained_heap() as inner:
            facts["inner"] = allocate()
        facts["after_inner"] = allocate()
    facts["after"] = allocate()
    facts["in_force"] = [outer, inner]
    print(json.dumps(facts))
""")


def test_large_blocks_come_from_the_kept_heap_inside_and_from_mmap_again_after():
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc older than 2.33 has no mallinfo2")
    # A fresh interpreter: this process's heap settings and history stay out of it.
    completed = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    facts = __import__("json").loads(completed.stdout)
    block = 64 << 20
    assert facts["in_force"] == [True, True]
    assert facts["default"][0] >= block  # glibc's default: a block this large is mmapped
    for inside in ("outer", "inner", "after_inner"):  # the inner block's end keeps the outer setting
        mapped, arena = facts[inside]
        assert mapped == 0 and arena >= block, (inside, facts)  # from the heap, and kept after free
    mapped, arena = facts["after"]
    assert mapped >= block and arena < block  # defaults back, the kept memory trimmed away


def test_nothing_is_left_in_force_after_an_exception():
    with pytest.raises(RuntimeError):
        with retained_heap():
            raise RuntimeError("the network failed")
    import CervixAutoSegLib.heap as heap

    assert heap._depth == 0 and not heap._in_force
