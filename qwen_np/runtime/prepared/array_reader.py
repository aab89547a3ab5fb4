"""Reading a prepared-model cache file's arrays into place, in threads, checking the crc32 of
each; and checking the crc32 of the arrays left mapped.

Memory: on a hit the arrays are read into the process's own memory, as a cold load's
converted tensors are: NumPy asks the kernel for huge pages for large arrays, and the
kernels stream through those faster than through a mapping of the file's 4 KB pages
(decoding the real GGUF on the numba backend, 2 threads: 44-50 tok/s with every array
mapped from this file, 58-60 with them read; the LM head alone 20.6-22.6 against 33 G
weights/s). Threads (up to 4, as the cores allow) read each array straight into its place
and take its crc32 there. The arrays a cold load leaves mapped from the model's own file
(read-only there: an untied float embedding or LM head, float vectors of a GGUF) and an
untied quantized embedding table stay mapped (read-only), as they are in a cold load, so
that an embedding's pages are given back after each lookup (tensors/mapped.py) and never count
in the resident set at once. The file itself is never written.
"""

from __future__ import annotations

import os
import threading
import zlib

import numpy as np


def read_arrays(file: str, arrays: list) -> int | None:
    """Read each (offset, crc32, array, writeable) of the file into its array (see
    ArrayReader) and wait; the offset of the first damaged one, or None."""
    return ArrayReader(file, arrays).join()


class ArrayReader:
    """Reads each (offset, crc32, array, writeable) of a file into its array, in threads (up
    to 4, as the cores allow; reading and zlib.crc32 let go of the GIL), started at once.
    join() waits, makes read-only the arrays that were so, and returns the offset of the
    first array whose bytes do not have its crc32 (or were cut short), None if all do."""

    def __init__(self, file: str, arrays: list):
        self.file, self.arrays, self.bad = file, arrays, []
        n = max(1, min(4, os.cpu_count() or 1, len(arrays)))
        shares, totals = [[] for _ in range(n)], [0] * n
        for offset, crc, a, _ in sorted(arrays, key=lambda x: -x[2].nbytes):
            i = totals.index(min(totals))
            shares[i].append((offset, crc, a))
            totals[i] += a.nbytes
        self.threads = [threading.Thread(target=self.read, args=(share,)) for share in shares
                        if share]
        for t in self.threads:
            t.start()

    def read(self, share):
        try:
            with open(self.file, "rb", buffering=0) as f:
                for offset, crc, a in share:
                    view = memoryview(a.reshape(-1).view(np.uint8)) if a.size else b""
                    f.seek(offset)
                    got = 0
                    while got < len(view):
                        k = f.readinto(view[got:])
                        if not k:
                            break
                        got += k
                    if got != len(view) or zlib.crc32(view) != crc:
                        self.bad.append(offset)
        except OSError:
            self.bad.append(share[0][0])

    def join(self) -> int | None:
        for t in self.threads:
            t.join()
        for _, _, a, writeable in self.arrays:
            a.flags.writeable = writeable
        return min(self.bad) if self.bad else None


def damaged_array(file: str, arrays: dict, chunk: int = 8 << 20) -> int | None:
    """The offset of the first array (of {(offset, bytes): crc32}) whose bytes in the file do
    not have its crc32; None if all do. Threads (up to 4, as the cores allow) each take a
    share of the bytes and read it through a buffer of their own: the pages are not mapped,
    so they do not count in the resident set, and reading and zlib.crc32 let go of the GIL."""
    n = max(1, min(4, os.cpu_count() or 1, len(arrays)))
    shares, totals = [[] for _ in range(n)], [0] * n
    for (offset, size), crc in sorted(arrays.items(), key=lambda a: -a[0][1]):
        i = totals.index(min(totals))
        shares[i].append((offset, size, crc))
        totals[i] += size
    bad = []

    def check(share):
        buf = memoryview(bytearray(chunk))
        try:
            with open(file, "rb", buffering=0) as f:
                for offset, size, crc in share:
                    got, pos, end = 0, offset, offset + size
                    f.seek(offset)
                    while pos < end:
                        k = f.readinto(buf[:min(chunk, end - pos)])
                        if not k:
                            break
                        got, pos = zlib.crc32(buf[:k], got), pos + k
                    if pos != end or got != crc:
                        bad.append(offset)
        except OSError:
            bad.append(share[0][0])

    threads = [threading.Thread(target=check, args=(share,)) for share in shares[1:]]
    for t in threads:
        t.start()
    check(shares[0])
    for t in threads:
        t.join()
    return min(bad) if bad else None
