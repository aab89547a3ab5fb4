"""NVRTC called directly through ctypes (CuPy cannot compile without a GPU driver): the
compile gate's way to compile backends/cuda/kernels.cu for a GPU architecture on a machine
that has none. The library comes from the PyPI wheel nvidia-cuda-nvrtc (13.0)."""

from __future__ import annotations

import ctypes
import importlib.util
import os


def nvrtc_library_dir() -> str | None:
    """The wheel's lib folder (site-packages/nvidia/cu13/lib), or None if it is not installed."""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else None) or []:
        lib = os.path.join(root, "cu13", "lib")
        if os.path.exists(os.path.join(lib, "libnvrtc.so.13")):
            return lib
    return None


def load_nvrtc(lib_dir: str):
    # libnvrtc opens its builtins library by name: load it first, globally (else error 7)
    ctypes.CDLL(os.path.join(lib_dir, "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(os.path.join(lib_dir, "libnvrtc.so.13"))


def compile_cuda(nvrtc, source: str, name: str, options, name_expressions=()):
    """(NVRTC result code, the program log, the cubin or b"", {name expression: lowered
    (mangled) name}) for `source`, instantiating the templates named as CuPy's RawModule does
    with its name_expressions."""
    prog = ctypes.c_void_p()
    check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(),
                                          0, None, None))
    try:
        for expr in name_expressions:
            check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, expr.encode()))
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        result = nvrtc.nvrtcCompileProgram(prog, len(options), opts)
        lowered = {}
        size = ctypes.c_size_t()
        check(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size)))
        log = ctypes.create_string_buffer(size.value)
        check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, log))
        cubin = b""
        if result == 0:
            check(nvrtc, nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size)))
            buf = ctypes.create_string_buffer(size.value)
            check(nvrtc, nvrtc.nvrtcGetCUBIN(prog, buf))
            cubin = buf.raw
            for expr in name_expressions:
                out = ctypes.c_char_p()
                check(nvrtc, nvrtc.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)))
                lowered[expr] = out.value.decode()
        return result, log.value.decode(errors="replace"), cubin, lowered
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))


def check(nvrtc, code: int) -> None:
    if code != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"NVRTC error {code}: {nvrtc.nvrtcGetErrorString(code).decode()}")
