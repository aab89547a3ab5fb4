import numpy as np
import pytest

from qwen_np.tensors.packing import (pack_codes, pack_int32_words, packed_length, unpack_codes,
                                   unpack_int32_words)

rng = np.random.default_rng(0)


def test_nibble_order_hand_worked():
    # codes 1, 2, 3 -> byte 0 = 0x21 (code 1 low, code 2 high), byte 1 = 0x03 (padded)
    assert pack_codes(np.array([[1, 2, 3]]), 4).tolist() == [[0x21, 0x03]]
    assert unpack_codes(np.array([[0x21, 0x03]], np.uint8), 4, 3).tolist() == [[1, 2, 3]]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n", [1, 7, 8, 33, 128, 129])
def test_round_trip_is_exact(bits, n):
    q = rng.integers(0, 1 << bits, size=(5, n))
    packed = pack_codes(q, bits)
    assert packed.dtype == np.uint8 and packed.shape == (5, packed_length(n, bits))
    assert np.array_equal(unpack_codes(packed, bits, n), q)


def test_out_of_range_codes_are_refused():
    with pytest.raises(ValueError, match="out of the 4-bit range"):
        pack_codes(np.array([16]), 4)
    with pytest.raises(ValueError, match="cannot pack 3-bit"):
        pack_codes(np.array([1]), 3)


def test_int32_words_hand_worked():
    # codes 0..7 along axis 0, least significant nibble first -> 0x76543210
    words = pack_int32_words(np.arange(8).reshape(8, 1), 4, axis=0)
    assert words.dtype == np.int32 and words.tolist() == [[0x76543210]]
    # a top nibble of 15 makes the int32 negative; unpacking must not smear the sign
    neg = pack_int32_words(np.array([[0, 0, 0, 0, 0, 0, 0, 15]]), 4, axis=1)
    assert neg.tolist() == [[np.int32(np.uint32(0xF0000000).view(np.int32))]]
    assert unpack_int32_words(neg, 4, axis=1).tolist() == [[0, 0, 0, 0, 0, 0, 0, 15]]
    # 8-bit: four bytes per word
    assert pack_int32_words(np.array([[1, 2, 3, 255]]), 8, axis=1).view(np.uint32).tolist() == \
        [[0xFF030201]]


@pytest.mark.parametrize("bits,axis", [(4, 0), (4, 1), (8, 0), (8, 1)])
def test_int32_round_trip(bits, axis):
    shape = (16, 24)
    q = rng.integers(0, 1 << bits, size=shape)
    assert np.array_equal(unpack_int32_words(pack_int32_words(q, bits, axis), bits, axis), q)
