"""Injection and the metric reductions of SPEC section 5 (numba CPU kernels)."""
import math

import numba
import numpy as np
import pytest

from gpu_inject.kernels import reduce


# ---------------------------------------------------------------- arc_snr

def test_arc_snr_by_hand():
    arc = np.zeros((1, 4, 4))
    inv = np.full((1, 4, 4), 4.0)  # sigma 0.5: a pixel is in A when arc > 0.5
    arc[0, 0, 0] = 1.0    # 2.0 sigma: in
    arc[0, 1, 2] = 0.6    # 1.2 sigma: in
    arc[0, 2, 2] = 0.5    # exactly 1 sigma: out (strict >)
    arc[0, 3, 3] = 0.2    # out
    arc[0, 3, 0] = 100.0  # would be in, but invvar 0: excluded
    inv[0, 3, 0] = 0.0
    arc[0, 2, 0] = 3.0    # invvar 1, 3 sigma: in
    inv[0, 2, 0] = 1.0
    expect = (1.0 + 0.6 + 3.0) / math.sqrt(0.25 + 0.25 + 1.0)
    got = reduce.arc_snr(arc, inv)
    assert got.dtype == np.float64 and got.shape == (1,)
    assert abs(got[0] - expect) < 1e-14 * expect  # a few float64 roundings


def test_arc_snr_zero_when_nothing_above_one_sigma():
    rng = np.random.default_rng(0)
    inv = rng.uniform(1.0, 100.0, (3, 8, 8))
    arc = 0.99 / np.sqrt(inv)  # everywhere just below 1 sigma
    arc[1] = 5.0               # stamp 1: everywhere above
    inv[2] = 0.0               # stamp 2: no valid pixel at all
    arc[2] = 5.0
    got = reduce.arc_snr(arc, inv)
    assert got[0] == 0.0 and got[2] == 0.0
    assert abs(got[1] - 5.0 * 64 / math.sqrt(np.sum(1 / inv[1]))) < 1e-12 * got[1]


def test_arc_snr_float32_and_float64_agree_bitwise():
    rng = np.random.default_rng(1)
    arc = rng.uniform(0, 0.3, (5, 16, 16)).astype(np.float32)
    inv = rng.uniform(0, 400, (5, 16, 16)).astype(np.float32)
    inv[:, ::3, ::5] = 0
    # The kernel promotes to float64 before any arithmetic, so the same values give the
    # same bits whatever their storage type.
    a32 = reduce.arc_snr(arc, inv)
    a64 = reduce.arc_snr(arc.astype(np.float64), inv.astype(np.float64))
    assert np.array_equal(a32, a64) and np.all(a32 > 0)
    o32 = reduce.arc_snr_opt(arc[:, None], inv[:, None])
    o64 = reduce.arc_snr_opt(arc[:, None].astype(np.float64), inv[:, None].astype(np.float64))
    assert np.array_equal(o32, o64)
    assert np.array_equal(reduce.band_sums(arc[:, None]),
                          reduce.band_sums(arc[:, None].astype(np.float64)))


def test_thread_count_and_batch_do_not_change_bits():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    rng = np.random.default_rng(2)
    arc = rng.normal(0.05, 0.2, (37, 3, 24, 24))
    inv = rng.uniform(0, 200, (37, 3, 24, 24))
    mb = rng.integers(0, 1 << 17, (37, 24, 24), dtype=np.int32)
    saved = numba.get_num_threads()
    try:
        res = []
        for t in (1, 2):
            numba.set_num_threads(t)
            res.append((reduce.arc_snr(arc[:, 1], inv[:, 1]), reduce.arc_snr_opt(arc, inv),
                        reduce.band_sums(arc), *reduce.mask_fractions(mb, inv)))
    finally:
        numba.set_num_threads(saved)
    for a, b in zip(*res):
        assert np.array_equal(a, b)
    # A sub-batch gives the same bits as its rows of the full batch.
    assert np.array_equal(reduce.arc_snr(arc[5:9, 1], inv[5:9, 1]), res[0][0][5:9])
    assert np.array_equal(reduce.arc_snr_opt(arc[5:9], inv[5:9]), res[0][1][5:9])


# ---------------------------------------------------------------- arc_snr_opt

def test_arc_snr_opt_by_hand():
    arc = np.zeros((2, 2, 3, 3))
    inv = np.ones((2, 2, 3, 3))
    arc[0, 0, 0, 0] = 2.0   # 4 * 1
    arc[0, 1, 1, 1] = 1.0
    inv[0, 1, 1, 1] = 9.0   # 1 * 9
    arc[0, 1, 2, 2] = 50.0  # invvar 0: contributes nothing
    inv[0, 1, 2, 2] = 0.0
    arc[1] = 0.5            # 18 pixels * 0.25
    got = reduce.arc_snr_opt(arc, inv)
    assert got[0] == math.sqrt(13.0)  # exact: small integers
    assert got[1] == math.sqrt(4.5)


# ---------------------------------------------------------------- mask fractions

def test_bit_constants():
    assert reduce.BAD_BITS == 0b1100_1111_1110
    assert reduce.WISE_BITS == 0b11_0000_0000


def test_mask_fractions_on_planted_masks():
    S = 6
    mb = np.zeros((1, S, S), dtype=np.int32)
    inv = np.ones((1, 3, S, S), dtype=np.float32)
    flat = mb.reshape(-1)
    bad_bits = [1, 2, 3, 4, 5, 6, 7, 10, 11]
    other_bits = [0, 8, 9, 12, 13, 14, 15, 16]
    for p, bit in enumerate(bad_bits + other_bits):  # pixels 0..16, one bit each
        flat[p] = 1 << bit
    flat[17] = np.int32(-65536)    # bits 16-31 (bit 31: negative int32): neither bad nor wise
    flat[18] = (1 << 16) | (1 << 9)  # bit 16 kept alongside a WISE bit: wise only
    inv[0, 2].reshape(-1)[20] = 0.0  # invvar 0 in one band only: bad
    inv[0, 0].reshape(-1)[21] = 0.0  # invvar 0 plus a WISE bit: both
    flat[21] = 1 << 8
    bad, wise = reduce.mask_fractions(mb, inv)
    # bad: the 9 bad-bit pixels + pixels 20, 21; wise: pixels of bits 8, 9 + 18 + 21.
    assert bad[0] == 11 / 36
    assert wise[0] == 4 / 36
    # Other integer types of the same values give the same answer.
    for dt in (np.int64, np.uint32):
        b2, w2 = reduce.mask_fractions(mb.astype(dt), inv)
        assert b2[0] == bad[0] and w2[0] == wise[0]


def test_mask_fractions_clean_and_fully_bad():
    mb = np.zeros((2, 8, 8), dtype=np.int32)
    inv = np.ones((2, 3, 8, 8))
    mb[1] = 1 << 1
    inv[1, :, :4, :] = 0.0
    bad, wise = reduce.mask_fractions(mb, inv)
    assert list(bad) == [0.0, 1.0] and list(wise) == [0.0, 0.0]


# ---------------------------------------------------------------- inject and band sums

def test_inject_only_adds():
    rng = np.random.default_rng(3)
    cutout = rng.normal(0, 0.01, (4, 3, 16, 16)).astype(np.float32)
    keep = cutout.copy()
    arc = rng.uniform(0, 0.5, (4, 3, 16, 16))  # float64: cast to float32 before adding
    arc[2] = 0.0
    img = reduce.inject(cutout, arc)
    assert img.dtype == np.float32 and img.shape == cutout.shape
    assert np.array_equal(img, cutout + arc.astype(np.float32))
    assert np.array_equal(img[2], cutout[2])  # a zero arc leaves the cutout bit for bit
    assert np.array_equal(cutout, keep)       # the input is not modified


def test_inject_rows_is_the_three_kernels_on_those_rows_bit_for_bit():
    """The engine's fused pass: a chunk's arcs injected into (and measured on) rows of the
    batch given in any order; the other rows untouched."""
    rng = np.random.default_rng(9)
    cutout = rng.normal(0, 0.01, (7, 3, 12, 12)).astype(np.float32)
    invvar = rng.uniform(0, 2e4, (7, 3, 12, 12)).astype(np.float32)
    invvar[2, 1, :3] = 0.0
    arcs = rng.uniform(0, 0.05, (3, 3, 12, 12)).astype(np.float32)
    rows = np.array([5, 2, 0])
    image = cutout.copy()
    snr = np.full(7, np.nan)
    opt = np.full(7, np.nan)
    reduce.inject_rows(cutout, invvar, arcs, rows, 1, image, snr, opt)
    assert np.array_equal(image[rows], reduce.inject(cutout[rows], arcs))
    assert np.array_equal(snr[rows], reduce.arc_snr(arcs[:, 1], invvar[rows, 1]))
    assert np.array_equal(opt[rows], reduce.arc_snr_opt(arcs, invvar[rows]))
    assert np.all(snr[rows] > 0)
    rest = [1, 3, 4, 6]
    assert np.array_equal(image[rest], cutout[rest]) and np.isnan(snr[rest]).all()
    with pytest.raises(ValueError, match="shapes differ"):
        reduce.inject_rows(cutout, invvar, arcs, rows[:2], 1, image, snr, opt)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        reduce.inject_rows(cutout, invvar, arcs, rows, 1, image.astype(np.float64), snr, opt)


def test_band_sums():
    rng = np.random.default_rng(4)
    arc = rng.uniform(0, 1, (3, 3, 20, 20)).astype(np.float32)
    arc[1, 2] = 0.25
    got = reduce.band_sums(arc)
    assert got.shape == (3, 3) and got.dtype == np.float64
    assert got[1, 2] == 100.0  # 400 * 0.25, exact in float64
    # Same numbers, another summation order (numpy's pairwise): float64 rounding of 400
    # terms ~1e-14 relative; a float32 accumulation would be off by ~1e-6.
    ref = arc.astype(np.float64).sum(axis=(2, 3))
    assert np.allclose(got, ref, rtol=1e-13, atol=0)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        reduce.arc_snr(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(ValueError):
        reduce.inject(np.zeros((1, 4, 4), np.float32), np.zeros((2, 4, 4)))
    with pytest.raises(TypeError):
        reduce.mask_fractions(np.zeros((1, 4, 4)), np.ones((1, 3, 4, 4)))
