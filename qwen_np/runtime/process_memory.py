"""This process's memory, read and given back: its resident set from /proc, and glibc's
malloc_trim after a load frees its large temporaries. Linux readings; None or a no-op
elsewhere."""

from __future__ import annotations


def rss_bytes(field: str = "VmRSS") -> int | None:
    """This process's resident set (VmRSS) or its peak (VmHWM), from /proc; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_heap() -> None:
    """Give memory that Python has freed back to the OS (glibc's malloc_trim).

    Converting a quantized checkpoint frees many large temporaries; glibc raises its mmap
    threshold after such frees and keeps later ones in the heap, where they would sit in the
    process's RSS as if still used. No-op where there is no glibc.
    """
    import ctypes
    try:        # the process's own symbols: glibc is loaded already (no find_library, which
        ctypes.CDLL(None).malloc_trim(0)     # runs ldconfig in a child process)
    except (OSError, AttributeError):
        pass
