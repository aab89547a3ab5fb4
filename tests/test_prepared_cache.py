"""qwen_np/runtime/prepared/: a warm load equals a cold one bit for bit, and a cache file is
never used without its checks passing."""

import ast
import json
import os
import shutil
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

import qwen_np
from qwen_np.runtime import load as api, prepared as pc
from qwen_np.runtime.prepared import file_format, sources
from qwen_np.apps import fetch
from qwen_np.runtime import cache_folder
from qwen_np.backends import get_backend
from qwen_np.errors import FormatError

from conftest import fixture_path
from gguf_writer import write_gguf_from_hf

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType

BACKENDS = ["numpy", "numba"]
QUANT_FOLDERS = ["quant/gptqmodel-4bit-g32-descact-asym", "quant/autoawq-4bit-g32-gemm",
                 "quant/gptqmodel-8bit-g64-sym", "qwen1/qwen1-gptq-int4",
                 "moe/gptqmodel-qwen3moe-4bit-g32-sym"]
IDS = [1, 5, 9, 2, 7, 3, 11]
TEXT = "def add(a, b):\n    return a + b  # <|im_end|> x"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Each test its own cache folder, and the cache on whatever the environment says."""
    d = tmp_path / "prepared"
    monkeypatch.setenv("QWEN_NP_CACHE_DIR", str(d))
    monkeypatch.delenv("QWEN_NP_PREPARED_CACHE", raising=False)
    return d


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
    """A Q8_0 GGUF of the untied bfloat16 fixture (hidden 32: every matrix quantized, the
    embedding a lookup table left in its blocks)."""
    path = str(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    write_gguf_from_hf(fixture_path("qwen2-untied-bf16-sharded"), path, T.Q8_0)
    return path


@pytest.fixture(scope="module", params=["Q4_0", "Q4_1", "Q5_0"])
def gguf_other_types(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gguf") / f"tiny-{request.param}.gguf")
    write_gguf_from_hf(fixture_path("qwen2-untied-bf16-sharded"), path, T[request.param])
    return path


@pytest.fixture(scope="module", params=["moe/qwen2moe-step2-f32", "yarn/qwen3moe-yarn4"])
def gguf_moe_yarn(request, tmp_path_factory):
    """Q4_0 GGUFs with stacked experts (one also with YaRN, whose parameters are a nested
    dataclass of the config)."""
    path = str(tmp_path_factory.mktemp("gguf") / "moe.gguf")
    write_gguf_from_hf(fixture_path(request.param), path, T.Q4_0)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_moe_and_yarn_gguf_warm_load_equals_cold_load(gguf_moe_yarn, backend, monkeypatch,
                                                     cache_dir):
    cold, warm = warm_equals_cold(gguf_moe_yarn, backend, monkeypatch, cache_dir)
    assert warm.config.num_experts > 0


def cache_files(d) -> list[str]:
    return sorted(f for f in os.listdir(d) if f.endswith(pc.SUFFIX)) if os.path.isdir(d) else []


def no_cold_load(monkeypatch):
    """From now on a load must come from the cache: reading the model's files fails."""
    def refuse(path):
        raise AssertionError("the model was read from its files, not from the cache")
    monkeypatch.setattr(api, "read_model", refuse)


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def warm_equals_cold(path, backend, monkeypatch, cache_dir):
    cold = qwen_np.load(path, backend=backend, prepared_cache=False)
    assert cache_files(cache_dir) == []
    first = qwen_np.load(path, backend=backend)            # cold, writes the cache
    assert len(cache_files(cache_dir)) == 1
    with monkeypatch.context() as m:
        no_cold_load(m)
        warm = qwen_np.load(path, backend=backend)
    expected = cold.logits(IDS)
    assert np.array_equal(first.logits(IDS), expected)
    assert np.array_equal(warm.logits(IDS), expected)
    assert warm.config == cold.config
    assert warm.stop_ids() == cold.stop_ids()
    assert warm.generate(IDS, 6) == cold.generate(IDS, 6)
    return cold, warm


@pytest.mark.parametrize("backend", BACKENDS)
def test_gguf_warm_load_equals_cold_load(gguf_model, backend, monkeypatch, cache_dir):
    cold, warm = warm_equals_cold(gguf_model, backend, monkeypatch, cache_dir)
    assert warm.tokenizer.source == cold.tokenizer.source == gguf_model
    ids = cold.tokenizer.encode(TEXT)
    assert warm.tokenizer.encode(TEXT) == ids
    assert warm.tokenizer.decode(ids) == cold.tokenizer.decode(ids)
    assert warm.tokenizer.encode_plain(TEXT) == cold.tokenizer.encode_plain(TEXT)
    assert type(warm.weights.embed) is type(cold.weights.embed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_block_types_warm_load_equals_cold_load(gguf_other_types, backend, monkeypatch,
                                                      cache_dir):
    warm_equals_cold(gguf_other_types, backend, monkeypatch, cache_dir)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", QUANT_FOLDERS)
def test_safetensors_warm_load_equals_cold_load(name, backend, monkeypatch, cache_dir):
    cold, warm = warm_equals_cold(fixture_path(name), backend, monkeypatch, cache_dir)
    if cold._make_tokenizer is None:
        assert warm._make_tokenizer is None
    else:
        assert warm.tokenizer.source == cold.tokenizer.source
        assert warm.tokenizer.encode(TEXT) == cold.tokenizer.encode(TEXT)


def arrays_of(t) -> dict:
    if isinstance(t, np.ndarray):
        return {"": t}
    fields = getattr(t, "__dataclass_fields__", {})
    return {k: getattr(t, k) for k in fields if isinstance(getattr(t, k), np.ndarray)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_weights_have_the_cold_types_dtypes_shapes_and_flags(gguf_model, backend):
    """Numba compiles a kernel per argument type: a warm load's arrays are exactly as
    writable, contiguous and aligned as a cold load's; and they lie where a cold load's do:
    in the process's own memory (the kernels stream through it faster than through a file's
    mapped pages), or mapped from a file where the cold load maps them from the model's."""
    from qwen_np.tensors.mapped import mapping_of
    be = get_backend(backend)
    _, cold, _ = api.read_model(gguf_model)
    from qwen_np.model.weights import prepare_tensors
    prepare_tensors(cold, be.prepare)
    qwen_np.load(gguf_model, backend=backend)
    _, warm, _ = pc.cache_entry(gguf_model, be, None).read()
    assert cold.keys() == warm.keys()
    for name in cold:
        assert type(warm[name]) is type(cold[name]), name
        a, b = arrays_of(cold[name]), arrays_of(warm[name])
        assert a.keys() == b.keys(), name
        for k in a:
            assert (a[k].dtype, a[k].shape) == (b[k].dtype, b[k].shape), (name, k)
            for flag in ("writeable", "c_contiguous", "aligned"):
                assert getattr(a[k].flags, flag) == getattr(b[k].flags, flag), (name, k, flag)
            assert (mapping_of(a[k]) is None) == (mapping_of(b[k]) is None), (name, k)


def test_one_object_under_two_names_stays_one(gguf_model, monkeypatch, cache_dir):
    be = get_backend("numpy")
    config, tensors, _ = api.read_model(gguf_model)
    tensors["lm_head.weight"] = tensors["model.layers.0.mlp.up_proj.weight"]
    entry = pc.cache_entry(gguf_model, be, None)
    entry.write(config, tensors, None)
    _, warm, make = entry.read()
    assert warm["lm_head.weight"] is warm["model.layers.0.mlp.up_proj.weight"]
    assert make is None
    assert index_of(entry.file)["tensors"]["lm_head.weight"] == \
        {"kind": "same", "name": "model.layers.0.mlp.up_proj.weight"}


def test_a_float_model_is_not_written(cache_dir):
    qwen_np.load(fixture_path("qwen2-tied-f32"))
    assert cache_files(cache_dir) == []


# -- what invalidates a cache file -------------------------------------------------------

def copy_of(path, tmp_path):
    dst = tmp_path / os.path.basename(path)
    (shutil.copytree if os.path.isdir(path) else shutil.copy2)(path, dst)
    return str(dst)


def reloads(path, capsys, monkeypatch, backend="numpy", needle=None):
    """Load once more: with `needle`, the cache must be refused with one line naming it,
    rebuilt, and the result equal a cold load; without, it must be a silent hit."""
    capsys.readouterr()
    if needle is None:
        with monkeypatch.context() as m:
            no_cold_load(m)
            qwen_np.load(path, backend=backend)
        assert stderr_lines(capsys) == []
        return
    model = qwen_np.load(path, backend=backend)
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and needle in lines[0] and "rebuilding" in lines[0], lines
    assert np.array_equal(model.logits(IDS),
                          qwen_np.load(path, backend=backend, prepared_cache=False).logits(IDS))
    with monkeypatch.context() as m:    # the rebuilt file is used next time
        no_cold_load(m)
        qwen_np.load(path, backend=backend)


def test_content_change_with_size_and_mtime_restored_is_noticed(gguf_model, tmp_path, capsys,
                                                                monkeypatch):
    path = copy_of(gguf_model, tmp_path)
    qwen_np.load(path)
    reloads(path, capsys, monkeypatch)
    st = os.stat(path)
    with open(path, "r+b") as f:       # a byte of the last tensor's data
        f.seek(-1, os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([b[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    reloads(path, capsys, monkeypatch, needle="tiny.gguf changed")


def test_folder_file_changed_added_or_removed(tmp_path, capsys, monkeypatch):
    path = copy_of(fixture_path("quant/gptqmodel-8bit-g64-sym"), tmp_path)
    qwen_np.load(path)
    cfg = json.load(open(os.path.join(path, "config.json")))
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"), indent=4)   # new size
    reloads(path, capsys, monkeypatch, needle="config.json changed")
    os.remove(os.path.join(path, "generation_config.json"))
    reloads(path, capsys, monkeypatch, needle="generation_config.json is gone")
    shutil.copy(os.path.join(path, "tokenizer.json"), os.path.join(path, "qwen.tiktoken"))
    reloads(path, capsys, monkeypatch, needle="qwen.tiktoken appeared")


def test_a_touched_file_is_hashed_again_and_still_a_hit(gguf_model, tmp_path, capsys,
                                                       monkeypatch):
    path = copy_of(gguf_model, tmp_path)
    monkeypatch.setattr(sources, "RACY_NS", 0)     # a new file's stamp is recorded at once
    qwen_np.load(path)
    hashed = []
    real_sha = cache_folder.sha256_of
    monkeypatch.setattr(cache_folder, "sha256_of", lambda p: hashed.append(p) or real_sha(p))
    reloads(path, capsys, monkeypatch)
    assert hashed == []                # the stat shortcut: not read at all
    os.utime(path, ns=(10**18, 10**18))
    reloads(path, capsys, monkeypatch)
    assert hashed == [os.path.realpath(path)]


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.setattr(qwen_np.version, "__version__", "9.9.9"), "qwen-np version"),
    (lambda m: m.setattr(file_format, "CACHE_FORMAT", file_format.CACHE_FORMAT + 1),
     "cache format 1"),
    (lambda m: m.setattr(pc, "code_stamp", lambda: "0123"), "qwen-np's source files"),
    (lambda m: m.setattr(get_backend("numpy").__class__, "prepared_layout", "v2"),
     "prepared layout"),
])
def test_version_format_code_or_layout_change_invalidates(gguf_model, change, needle, capsys,
                                                          monkeypatch):
    qwen_np.load(gguf_model)
    change(monkeypatch)
    reloads(gguf_model, capsys, monkeypatch, needle=needle)


def modules_run_by_cold_loads(loads) -> set[str]:
    """The qwen-np modules whose functions run (outside any module's import) while each
    (path, backend) of `loads` is loaded cold and its cache file written."""
    import sys
    seen = set()
    here = sys._getframe()              # the frames below this one are pytest's

    def in_an_import(frame) -> bool:
        while frame is not None and frame is not here:
            if frame.f_code.co_name == "<module>":
                return True
            frame = frame.f_back
        return False

    def profile(frame, event, arg):
        name = frame.f_globals.get("__name__", "")
        if event == "call" and name.startswith("qwen_np") and not in_an_import(frame):
            seen.add(name)

    for path, backend in loads:
        sys.setprofile(profile)
        try:
            qwen_np.load(path, backend=backend, prepared_cache=True)
        finally:
            sys.setprofile(None)
    return seen


def test_the_code_stamp_names_every_module_that_reads_or_prepares_a_model(gguf_model,
                                                                           gguf_other_types):
    """Every module a cold load runs shapes the cache file, so its text must be in the code
    stamp (sources.LAYOUT_CODE): GGUF, Hugging Face (sharded, GPTQ with act-order, AWQ,
    8-bit, MoE, mixed), original Qwen, both cached backends."""
    loads = [(gguf_model, "numpy"), (gguf_model, "numba"), (gguf_other_types, "numba")]
    loads += [(fixture_path(f), b) for f, b in [
        ("qwen2-untied-bf16-sharded", "numba"), ("qwen2-tied-f32", "numpy"),
        ("quant/gptqmodel-4bit-g32-descact-asym", "numba"),
        ("quant/autoawq-4bit-g32-gemm", "numpy"), ("quant/gptqmodel-8bit-g64-sym", "numba"),
        ("moe/gptqmodel-qwen3moe-4bit-g32-sym", "numba"),
        ("mixed/qwen-np-mixed-4bit-g32", "numba"), ("qwen1/qwen1-bf16-rotary-half", "numba"),
        ("qwen1/qwen1-gptq-int4", "numpy")]]
    ran = modules_run_by_cold_loads(loads)
    assert "qwen_np.formats.gguf" in ran and "qwen_np.backends.numba.tiles" in ran  # it traces
    assert ran - set(sources.LAYOUT_CODE) == set()


def test_the_code_stamp_follows_the_text_not_the_mtime(tmp_path, monkeypatch):
    import sys
    module = tmp_path / "layout_probe.py"
    module.write_text("LANES = 16\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sources, "LAYOUT_CODE", ("layout_probe",))
    first = sources.code_stamp()
    os.utime(module, ns=(10**18, 10**18))          # touched (a checkout): the same text
    assert sources.code_stamp() == first
    module.write_text("LANES = 32\n")
    assert sources.code_stamp() != first
    sys.modules.pop("layout_probe", None)


def test_an_edit_outside_the_loading_code_keeps_the_cache(gguf_model, capsys, monkeypatch):
    """The kernels and the forward pass are not in the stamp: a cache file made before an
    edit to them is still a hit."""
    from qwen_np.backends.numba import tile_kernels
    from qwen_np.model import forward
    assert {tile_kernels.__name__, forward.__name__} & set(sources.LAYOUT_CODE) == set()
    qwen_np.load(gguf_model, backend="numba")
    reloads(gguf_model, capsys, monkeypatch, backend="numba")


def test_numba_layout_version_invalidates(gguf_model, capsys, monkeypatch):
    from qwen_np.backends.numba.backend import NumbaBackend
    qwen_np.load(gguf_model, backend="numba")
    monkeypatch.setattr(NumbaBackend, "prepared_layout", NumbaBackend.prepared_layout + " (next)")
    reloads(gguf_model, capsys, monkeypatch, backend="numba", needle="prepared layout")


# -- damaged cache files -------------------------------------------------------------------

def the_file(cache_dir) -> str:
    (name,) = cache_files(cache_dir)
    return os.path.join(cache_dir, name)


def index_of(file) -> dict:
    with open(file, "rb") as f:
        _, _, _, offset, length = file_format.HEADER.unpack(f.read(file_format.HEADER.size))
        f.seek(offset)
        return json.loads(f.read(length))


def rewrite_index(file, edit):
    """Edit a cache file's index and give it a matching crc32 (a file that passes the
    checksums but says something else)."""
    with open(file, "r+b") as f:
        magic, fmt, _, offset, length = file_format.HEADER.unpack(
            f.read(file_format.HEADER.size))
        f.seek(offset)
        index = json.loads(f.read(length))
        edit(index)
        raw = json.dumps(index).encode()
        f.seek(offset)
        f.write(raw)
        f.truncate()
        f.seek(0)
        f.write(file_format.HEADER.pack(magic, fmt, zlib.crc32(raw), offset, len(raw)))


def largest_array(file) -> int:
    """A byte in the middle of the file's largest array."""
    def nbytes(rec):
        return int(np.prod(rec["shape"])) * np.dtype(rec["dtype"]).itemsize
    rec = max(records(index_of(file)), key=nbytes)
    return rec["offset"] + nbytes(rec) // 2


def flip_byte(file, offset):
    with open(file, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


@pytest.mark.parametrize("damage, needle", [
    (lambda p: os.truncate(p, os.path.getsize(p) - 100), "bytes long, its header says"),
    (lambda p: os.truncate(p, 1000), "bytes long, its header says"),
    (lambda p: os.truncate(p, 10), "not a prepared-model cache file"),
    (lambda p: flip_byte(p, 0), "not a prepared-model cache file"),
    (lambda p: flip_byte(p, 8), "cache format"),
    (lambda p: flip_byte(p, largest_array(p)), "data is damaged"),
    (lambda p: flip_byte(p, index_of(p)["tensors"]["model.norm.weight"]["array"]["offset"]),
     "data is damaged"),
    (lambda p: flip_byte(p, index_of(p)["tokenizer"]["json"]["offset"] + 100),
     "data is damaged"),
    (lambda p: flip_byte(p, os.path.getsize(p) - 3), "index is damaged"),
])
def test_damaged_file_is_reported_in_one_line_and_rebuilt(gguf_model, damage, needle, capsys,
                                                          monkeypatch, cache_dir):
    qwen_np.load(gguf_model)
    damage(the_file(cache_dir))
    reloads(gguf_model, capsys, monkeypatch, needle=needle)


@pytest.mark.parametrize("edit", [
    lambda ix: ix["tensors"]["model.norm.weight"].update(kind="CacheEntry"),
    lambda ix: ix["tensors"]["model.norm.weight"].update(kind="posix.system"),
    lambda ix: ix["tensors"]["model.norm.weight"]["array"].update(dtype="|O"),
    lambda ix: ix["tensors"]["model.norm.weight"]["array"].update(offset=1 << 40),
    lambda ix: ix["tensors"]["model.norm.weight"]["array"].update(offset=65),
    lambda ix: ix["config"].update(unknown_field=1),
    lambda ix: ix["tensors"]["model.layers.0.mlp.up_proj.weight"]["fields"].pop("perm"),
])
def test_an_index_that_passes_its_checksum_but_is_malformed_is_refused(gguf_model, edit,
                                                                       capsys, monkeypatch,
                                                                       cache_dir):
    qwen_np.load(gguf_model)
    rewrite_index(the_file(cache_dir), edit)
    reloads(gguf_model, capsys, monkeypatch, needle="unreadable")


def test_the_module_never_unpickles():
    folder = os.path.dirname(pc.__file__)          # the package: each of its modules
    for file in sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py")):
        tree = ast.parse(open(file, encoding="utf-8").read())
        imported = {a.name.split(".")[0] for n in ast.walk(tree)
                    if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"pickle", "marshal", "shelve", "dill", "cloudpickle"}, file
        assert "allow_pickle" not in open(file, encoding="utf-8").read(), file


# -- when the cache is not used, or cannot be written ----------------------------------------

def test_an_unwritable_cache_folder_still_loads(gguf_model, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("QWEN_NP_CACHE_DIR", str(blocker / "prepared"))
    capsys.readouterr()
    model = qwen_np.load(gguf_model)
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("qwen-np: prepared cache not written"), lines
    assert model.tokenizer.encode(TEXT)
    assert np.array_equal(model.logits(IDS),
                          qwen_np.load(gguf_model, prepared_cache=False).logits(IDS))


def test_a_full_disk_is_checked_before_writing(gguf_model, capsys, monkeypatch, cache_dir):
    monkeypatch.setattr(file_format.shutil, "disk_usage", lambda p: SimpleNamespace(free=1000))
    capsys.readouterr()
    qwen_np.load(gguf_model)
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "MiB needed" in lines[0], lines
    assert cache_files(cache_dir) == []
    assert not any(f.endswith(".tmp") for f in os.listdir(cache_dir))


def test_a_failed_write_leaves_no_temporary_file(gguf_model, capsys, monkeypatch, cache_dir):
    def fail(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(file_format.os, "replace", fail)
    qwen_np.load(gguf_model)
    assert "No space left on device" in stderr_lines(capsys)[0]
    assert [f for f in os.listdir(cache_dir) if f != sources.STAT_INDEX] == []


def test_turned_off_by_argument_or_environment_writes_nothing(gguf_model, monkeypatch,
                                                              cache_dir):
    qwen_np.load(gguf_model, prepared_cache=False)
    monkeypatch.setenv("QWEN_NP_PREPARED_CACHE", "0")
    qwen_np.load(gguf_model)
    qwen_np.load(gguf_model, backend="numba")
    assert not os.path.exists(cache_dir)
    qwen_np.load(gguf_model, prepared_cache=True)     # an explicit True wins
    assert len(cache_files(cache_dir)) == 1


def test_cli_flag_turns_it_off(gguf_model, capsys, cache_dir):
    from qwen_np.apps.cli import main
    assert main(["run", "-m", gguf_model, "-p", "ab", "-n", "2", "--no-prepared-cache"]) == 0
    assert not os.path.exists(cache_dir)
    assert main(["run", "-m", gguf_model, "-p", "ab", "-n", "2"]) == 0
    assert len(cache_files(cache_dir)) == 1


def test_a_backend_that_declares_nothing_is_not_cached(gguf_model, cache_dir):
    be = get_backend("numpy")
    be.prepared_layout = None          # as a backend object of someone else's would be
    qwen_np.load(gguf_model, backend=be)
    assert not os.path.exists(cache_dir)


def test_a_malformed_model_never_produces_a_cache_file(tmp_path, cache_dir):
    path = copy_of(fixture_path("quant/gptqmodel-8bit-g64-sym"), tmp_path)
    cfg_path = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_path))
    json.dump(dict(cfg, num_hidden_layers=1), open(cfg_path, "w"))   # layer 1 is unexpected
    with pytest.raises(FormatError, match="unexpected tensor"):
        qwen_np.load(path)
    assert cache_files(cache_dir) == []


def test_a_malformed_tokenizer_is_refused_on_use_as_before(tmp_path, cache_dir):
    path = copy_of(fixture_path("quant/gptqmodel-8bit-g64-sym"), tmp_path)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write("{not json")
    errors = []
    for _ in range(2):                 # cold (writes the cache), then warm
        model = qwen_np.load(path)
        with pytest.raises(FormatError, match="tokenizer.json") as e:
            model.tokenizer
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    assert len(cache_files(cache_dir)) == 1


def test_a_folder_tokenizer_is_stored_as_its_file_is(tmp_path, cache_dir):
    """Not built and serialized again: tokenizers serializes through a table as long as the
    largest id, and ids near 2^31 (a fuzzed file) would abort the process."""
    path = copy_of(fixture_path("quant/gptqmodel-8bit-g64-sym"), tmp_path)
    tok = json.load(open(os.path.join(path, "tokenizer.json")))
    shift = 2**31 - 1000
    tok["model"]["vocab"] = {t: i + shift for t, i in tok["model"]["vocab"].items()}
    for t in tok["added_tokens"]:
        t["id"] += shift
    json.dump(tok, open(os.path.join(path, "tokenizer.json"), "w"))
    model = qwen_np.load(path)
    assert len(cache_files(cache_dir)) == 1
    file = the_file(cache_dir)
    rec = index_of(file)["tokenizer"]["json"]
    with open(file, "rb") as f:
        f.seek(rec["offset"])
        assert f.read(rec["shape"][0]) == open(os.path.join(path, "tokenizer.json"), "rb").read()
    assert qwen_np.load(path).tokenizer.encode(TEXT) == model.tokenizer.encode(TEXT)


def test_a_source_that_is_not_a_regular_file_is_left_to_the_loader(tmp_path, cache_dir):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(FormatError, match="not a regular file"):
        qwen_np.load(str(fifo))
    assert not os.path.exists(cache_dir)


def test_header_layout_is_as_drawn(gguf_model, cache_dir):
    qwen_np.load(gguf_model)
    file = the_file(cache_dir)
    with open(file, "rb") as f:
        head = f.read(file_format.HEADER_BYTES)
    magic, fmt, index_crc, offset, length = struct.unpack_from("<8sIIQQ", head)
    assert magic == b"QNPPREP\0" and fmt == file_format.CACHE_FORMAT
    assert head[32:] == bytes(32) and offset % 64 == 0
    assert offset + length == os.path.getsize(file)
    ix = index_of(file)
    offsets = [a["offset"] for t in ix["tensors"].values() for a in records(t)]
    assert offsets and all(o % 64 == 0 for o in offsets)


def records(t):
    if isinstance(t, dict):
        if "offset" in t and "dtype" in t:
            yield t
        for v in t.values():
            yield from records(v)
    elif isinstance(t, list):
        for v in t:
            yield from records(v)
