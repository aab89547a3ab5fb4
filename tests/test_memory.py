import subprocess
import sys

from conftest import fixture_path
from qwen_np.apps.memory import GiB, preset_components, preset_config, total


def test_qwen_7b_float32_is_28_8_gib_of_weights():
    """Qwen-7B has 7,721,324,544 parameters (hand count: 2 x 151936 x 4096 for the embedding
    and the untied head; per layer c_attn 4096 x 12288 + 12288, c_proj 4096 x 4096, w1/w2
    2 x 11008 x 4096, mlp c_proj 4096 x 11008, two norms of 4096; 32 layers; final norm)."""
    c = preset_components(preset_config("Qwen-7B"), None, 128, 2048, kv_kind="float32")
    weights = c["float matrices"] + c["embedding"] + c["LM head"] + c["norms + biases"]
    assert weights == 7_721_324_544 * 4
    assert 28.7 < weights / GiB < 28.9


def test_qwen_7b_int4_at_2048_is_about_8_gb():
    c = preset_components(preset_config("Qwen-7B"), 4, 128, 2048, kv_kind="float16")
    # 6,476,005,376 projection weights at 4 bits
    assert c["quantized codes"] == 6_476_005_376 // 2
    # per group of 128: a float16 scale and a float16 offset
    assert c["scales + offsets"] == 6_476_005_376 // 128 * 4
    # KV cache: 2 (k, v) x 32 layers x 2048 positions x 4096 x 2 bytes
    assert c["KV cache"] == 2 * 32 * 2048 * 4096 * 2
    assert 6.0 < total(c) / GiB < 8.5


def test_memory_cli_preset_and_measure():
    r = subprocess.run([sys.executable, "-m", "qwen_np", "memory", "Qwen2.5-0.5B", "--context",
                        "512"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "int4 g128" in r.stdout and "predicted peak" in r.stdout
    r = subprocess.run([sys.executable, "-m", "qwen_np", "memory", fixture_path("qwen2-tied-f32"),
                        "--context", "64", "--measure"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "measured peak RSS" in r.stdout
    r = subprocess.run([sys.executable, "-m", "qwen_np", "memory", "NoSuchModel"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "NoSuchModel" in r.stderr


def test_qwen3_30b_a3b_lists_its_experts():
    """Hand count: 48 layers x 128 experts x (gate 768 x 2048, up 768 x 2048, down 2048 x 768)
    = 28,991,029,248 expert weights; at 4 bits with a float16 scale and offset per 128."""
    c = preset_components(preset_config("Qwen3-30B-A3B"), 4, 128, 2048, kv_kind="float16")
    experts = 48 * 128 * 3 * 768 * 2048
    assert experts == 28_991_029_248
    assert c["routed experts (8 of 128 read)"] == experts // 2 + experts // 128 * 4
    # attention: q 4096 x 2048, k and v 512 x 2048, o 2048 x 4096 per layer
    assert c["quantized codes"] == 48 * (2 * 4096 * 2048 + 2 * 512 * 2048) // 2
    assert c["float matrices"] == 48 * 128 * 2048 * 4            # the routers, float32
    assert 15 < total(c) / GiB < 17


def test_memory_counts_the_servers_slots_and_prefix_cache():
    """Qwen2.5-0.5B's float32 KV cache at 512 positions: 2 (k, v) x 24 layers x 512 x 2 heads x
    64 x 4 bytes = 12,582,912 bytes per slot, so 50,331,648 for 4 slots; the prefix cache adds
    its budget as given."""
    fixture = fixture_path("qwen2-tied-f32")
    r = subprocess.run([sys.executable, "-m", "qwen_np", "memory", "Qwen2.5-0.5B", "--context",
                        "512", "--max-batch", "4", "--prefix-cache-bytes", str(64 << 20)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {line.split("  ")[1].strip(): line for line in r.stdout.splitlines()[2:]
            if line.startswith("  ") and "GiB" in line}
    assert f"{50_331_648 / GiB:.3f} GiB" in rows["KV cache"]
    assert f"{(64 << 20) / GiB:.3f} GiB" in rows["prefix cache (at most)"]
    r = subprocess.run([sys.executable, "-m", "qwen_np", "memory", fixture, "--context", "64",
                        "--max-batch", "3", "--prefix-cache-bytes", "1000"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # the fixture (head_dim 48 / 6 = 8): 2 (k, v) x 2 layers x 64 x 2 heads x 8 x 4 bytes
    # = 16,384 per slot
    assert " 49,152 B" in next(l for l in r.stdout.splitlines() if "KV cache  " in l)
    assert " 1,000 B" in next(l for l in r.stdout.splitlines() if "prefix cache" in l)
