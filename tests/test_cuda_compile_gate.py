"""The compile gate: backends/cuda/kernels.cu compiled by NVRTC (the compiler CuPy uses at run
time) with the backend's own options, for every target architecture, without a GPU. Any error
or warning fails it, and ptxas must report no register spills for any kernel."""

import re

import pytest

from nvrtc import compile_cuda, load_nvrtc, nvrtc_library_dir
from qwen_np.backends.cuda import launch as ck

LIB = nvrtc_library_dir()
if LIB is None:
    pytest.skip("the nvidia-cuda-nvrtc wheel is not installed (the test extra installs it)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def nvrtc():
    return load_nvrtc(LIB)


def source():
    with open(ck.SOURCE, encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("arch", ck.ARCHITECTURES)
def test_kernels_compile_cleanly_without_spills(nvrtc, arch):
    result, log, cubin, lowered = compile_cuda(nvrtc, source(), "kernels.cu",
                                               ck.NVRTC_OPTIONS + (f"-arch={arch}", "-Xptxas=-v"),
                                               ck.KERNELS)
    assert result == 0, log
    assert len(cubin) > 1000
    assert not re.search(r"warning", log, re.IGNORECASE), log
    compiled = set(re.findall(r"Compiling entry function '([^']+)'", log))
    assert compiled == set(lowered.values()), (compiled ^ set(lowered.values()))
    assert len(lowered) == len(ck.KERNELS)
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    assert spills and not any(spills), log


def test_the_gate_catches_a_broken_kernel(nvrtc):
    broken = source().replace("return v;\n}", "return undefined_name;\n}", 1)
    result, log, _, _ = compile_cuda(nvrtc, broken, "kernels.cu",
                                     ck.NVRTC_OPTIONS + ("-arch=sm_90",))
    assert result != 0 and "undefined_name" in log
