import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.parallel import vq


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 16), n=st.integers(0, 300), seed=st.integers(0, 2**31 - 1))
def test_pack_roundtrip(bits, n, seed):
    k = 2**bits
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, k, (n,), generator=g)
    packed = vq.pack_indices(idx, k)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(n * bits / 8) == vq.packed_nbytes(n, 1, k)
    assert torch.equal(vq.unpack_indices(packed, n, k), idx)


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(1, 16), shape=st.tuples(st.integers(1, 4), st.integers(1, 20), st.integers(1, 8)))
def test_pack_roundtrip_shapes_and_extremes(bits, shape):
    k = 2**bits
    idx = torch.full(shape, k - 1)
    idx[..., 0] = 0
    out = vq.unpack_indices(vq.pack_indices(idx, k), idx.numel(), k).view(shape)
    assert torch.equal(out, idx)


@pytest.mark.parametrize("bad", [0, 1, 3, 1000, 131072, -4])
def test_bad_codebook_size(bad):
    with pytest.raises(ValueError, match="power of two"):
        vq.bits_per_index(bad)


def test_encode_is_nearest_and_decode_is_lookup():
    g = torch.Generator().manual_seed(0)
    books = torch.randn(4, 32, 8, generator=g)  # G=4, K=32, D/G=8
    x = torch.randn(50, 32, generator=g)
    idx = vq.encode(x, books)
    assert idx.shape == (50, 4)
    for gi in range(4):
        d = torch.cdist(x[:, gi * 8 : (gi + 1) * 8], books[gi])
        assert torch.equal(idx[:, gi], d.argmin(1))
    xh = vq.decode(idx, books)
    assert torch.equal(xh[3, 8:16], books[1, idx[3, 1]])
    # a codeword is its own reconstruction
    cw = books[:, 5].reshape(1, -1)
    assert torch.equal(vq.decode(vq.encode(cw, books), books), cw)


def test_kmeans_more_groups_lower_error():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g) @ torch.randn(16, 16, generator=g)
    errs = [vq.quantization_error(x, vq.fit_codebooks(x, groups, 16, max_iter=30)) for groups in (1, 4, 16)]
    assert errs[0] > errs[1] > errs[2]


def test_kmeans_rejects_too_few_vectors_and_bad_groups():
    with pytest.raises(ValueError, match="exceeds the 10 calibration vectors"):
        vq.fit_codebooks(torch.randn(10, 8), 1, 16)
    with pytest.raises(ValueError, match="does not divide"):
        vq.fit_codebooks(torch.randn(100, 8), 3, 4)
