import ctypes
import sys

import pytest
import torch

from beholder.core.memory import keep_freed_memory


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33")
def test_a_freed_large_tensor_stays_in_the_heap_for_reuse():
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2
    assert keep_freed_memory() is sys.platform.startswith("linux")
    size = 64 * 2**20
    block = torch.ones(size // 4)
    assert mallinfo2().hblkhd < size  # served from the heap, not a fresh mmap
    del block
    assert mallinfo2().fordblks >= size  # kept, free for the next batch
