"""decode_attention and kv_cache_append against their torch reference (float64), on every backend built here."""

import pytest
import torch

from smtpo_fast.ops import decode_attention, decode_attention_reference, kv_cache_append, kv_cache_append_reference
from helpers import assert_close, backend_device_pairs

PAIRS = backend_device_pairs()
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (4e-3, 4e-3)}


def _inputs(B, Hq, Hkv, S, D, dtype, device, *, extra_rows=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, D, generator=g)
    k = torch.randn(B + extra_rows, Hkv, S, D, generator=g) * 2
    v = torch.randn(B + extra_rows, Hkv, S, D, generator=g)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def _check(backend, device, q, k, v, lengths, rows=None, scale=None):
    out = decode_attention(q, k, v, lengths, cache_rows=rows, scale=scale, backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    ref = decode_attention_reference(q.double(), k.double(), v.double(), lengths, cache_rows=rows, scale=scale)
    rtol, atol = TOL[q.dtype]
    assert_close(out, ref, rtol=rtol, atol=atol, what=f"decode_attention {backend} {q.dtype}")


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_ragged_lengths_gqa(backend, device, dtype):
    # Lengths 0 (zeros out), 1, a partial block, the whole cache; 3 query heads per key/value head.
    B, Hq, Hkv, S, D = 5, 6, 2, 37, 24
    q, k, v = _inputs(B, Hq, Hkv, S, D, dtype, device)
    lengths = torch.tensor([0, 1, 17, 37, 36], device=device)
    _check(backend, device, q, k, v, lengths)
    out = decode_attention(q, k, v, lengths, backend=backend)
    assert torch.all(out[0] == 0)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("D", [64, 128])
def test_common_head_dims(backend, device, D):
    # The CPU kernel has compile-time paths for D = 64 and 128; the CUDA one picks lanes by D.
    q, k, v = _inputs(3, 4, 1, 40, D, torch.float32, device, seed=6)
    _check(backend, device, q, k, v, torch.tensor([40, 13, 2], device=device))


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D,Hq,Hkv", [(64, 9, 3), (64, 16, 2), (128, 7, 1), (128, 20, 2), (64, 2, 2)])
def test_common_head_dims_over_several_blocks(backend, device, dtype, D, Hq, Hkv):
    # The AVX-512 CPU path (D = 64 / 128, up to 8 query heads per key/value head, 16 positions at a time): lengths
    # over several 64-position blocks, partial 16-position chunks, 0 and 1; strided q, other cache rows. 10 query
    # heads per key/value head take the generic loop.
    q_big, k, v = _inputs(5, 2 * Hq, Hkv, 150, D, dtype, device, extra_rows=2, seed=D + Hq)
    q = q_big[:, ::2]
    rows = torch.tensor([6, 0, 3, 2, 1], device=device)
    _check(backend, device, q, k, v, torch.tensor([150, 70, 13, 0, 1], device=device), rows=rows)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_cache_rows_strided_views_and_scale(backend, device):
    # Queries read other cache rows; q is a strided view; caches are a slice of a larger buffer.
    B, Hq, Hkv, S, D = 4, 4, 4, 29, 16
    q_big, k, v = _inputs(B, Hq * 2, Hkv, S + 3, D, torch.float32, device, extra_rows=3, seed=1)
    q = q_big[:, ::2]
    k, v = k[:, :, 3:], v[:, :, 3:]
    rows = torch.tensor([6, 0, 3, 3], device=device)
    lengths = torch.tensor([29, 5, 11, 1], device=device, dtype=torch.int32)
    _check(backend, device, q, k, v, lengths, rows=rows, scale=0.37)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_large_scores_and_long_cache(backend, device):
    # Scores far from 0 (online-softmax rescaling) and a cache spanning several blocks / CUDA splits.
    S = 300 if backend == "triton" and device == "cpu" else 1200
    q, k, v = _inputs(2, 2, 1, S, 32, torch.float32, device, seed=2)
    q = q * 8
    _check(backend, device, q, k, v, torch.tensor([S, S - 7], device=device))


def test_reference_matches_explicit_softmax():
    q, k, v = _inputs(3, 4, 2, 9, 8, torch.float64, "cpu", seed=3)
    lengths = torch.tensor([9, 4, 1])
    out = decode_attention_reference(q, k, v, lengths)
    for b in range(3):
        for h in range(4):
            L = int(lengths[b])
            s = (k[b, h // 2, :L] @ q[b, h]) / 8 ** 0.5
            torch.testing.assert_close(out[b, h], torch.softmax(s, 0) @ v[b, h // 2, :L])


def test_bad_input_names_the_argument():
    q, k, v = _inputs(2, 4, 2, 8, 8, torch.float32, "cpu")
    L = torch.tensor([3, 4])
    with pytest.raises(ValueError, match="q: query heads"):
        decode_attention(q[:, :3], k, v, L)
    with pytest.raises(TypeError, match="k_cache"):
        decode_attention(q, k.double(), v, L)
    with pytest.raises(ValueError, match="lengths"):
        decode_attention(q, k, v, torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="lengths"):
        decode_attention(q, k, v, L.float())
    with pytest.raises(ValueError, match="k_cache: head dim"):
        decode_attention(q, k[..., :4], v[..., :4], L)
    with pytest.raises(ValueError, match="lengths: values"):
        decode_attention(q, k, v, torch.tensor([3, 9]), check_values=True)
    with pytest.raises(ValueError, match="cache_rows: values"):
        decode_attention(q, k, v, L, cache_rows=torch.tensor([0, 2]), check_values=True)


def test_kv_cache_append_matches_loop():
    g = torch.Generator().manual_seed(4)
    K = torch.zeros(3, 2, 10, 4)
    V = torch.zeros(3, 2, 10, 4)
    k_new, v_new = torch.randn(5, 2, 4, generator=g), torch.randn(5, 2, 4, generator=g)
    rows, pos = torch.tensor([0, 0, 2, 1, 2]), torch.tensor([0, 1, 9, 3, 4])
    kv_cache_append(K, V, k_new, v_new, rows, pos)
    K2, V2 = torch.zeros_like(K), torch.zeros_like(V)
    for i in range(5):
        K2[rows[i], :, pos[i]] = k_new[i]
        V2[rows[i], :, pos[i]] = v_new[i]
    assert torch.equal(K, K2) and torch.equal(V, V2)
    with pytest.raises(ValueError, match="k_new / v_new"):
        kv_cache_append(K, V, k_new[:, :1], v_new, rows, pos)
    with pytest.raises(ValueError, match="cache_rows / positions"):
        kv_cache_append(K, V, k_new, v_new, rows[:4], pos)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_append_then_attend_equals_full_attention(backend, device):
    # The decode step as the engine runs it: append the new token's k/v, attend over length + 1.
    B, Hq, Hkv, S, D = 3, 4, 2, 16, 8
    q, k, v = _inputs(B, Hq, Hkv, S, D, torch.float32, device, seed=5)
    pos = torch.tensor([3, 0, 15], device=device)
    k_new, v_new = torch.randn(B, Hkv, D, device=device), torch.randn(B, Hkv, D, device=device)
    rows = torch.arange(B, device=device)
    kv_cache_append(k, v, k_new, v_new, rows, pos)
    out = decode_attention(q, k, v, pos + 1, backend=backend)
    for b in range(B):
        L = int(pos[b]) + 1
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[b, :, None].double(), k[b, :, :L].double(), v[b, :, :L].double(), enable_gqa=True)[:, 0]
        assert_close(out[b], ref, rtol=1e-5, atol=1e-5, what="append+attend")
