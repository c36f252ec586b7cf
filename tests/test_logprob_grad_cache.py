"""The CPU gradient-buffer cache behind token_logprobs' default backward (smtpo_fast/ops/_grad_cache.py).

What must hold: a buffer that anything still references (the gradient, a view, a .grad slot, its storage) is never
handed out again; gradients are right over many calls with varying shapes and dtypes; the cache stays within its
bound; it can be switched off and emptied. Small shapes keep the tests fast: MIN_BYTES is lowered to 0.
"""

import gc
import random
import threading

import pytest
import torch

from smtpo_fast import _ext
from smtpo_fast.ops import _grad_cache, empty_grad_cache, grad_cache_info, token_logprobs

pytestmark = pytest.mark.skipif(not _ext.available("cpu", torch.device("cpu")), reason="CPU extension not built")


@pytest.fixture(autouse=True)
def small_cache(monkeypatch):
    monkeypatch.setattr(_grad_cache, "MIN_BYTES", 0)
    monkeypatch.delenv("SMTPO_GRAD_CACHE", raising=False)
    monkeypatch.delenv("SMTPO_GRAD_CACHE_BLOCKS", raising=False)
    empty_grad_cache()
    yield
    empty_grad_cache()


def make(N, V, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, V, generator=g) * 2).to(dtype)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[0] = -100
    w = torch.randn(N, generator=g)
    return logits, labels, w


def grad_of(logits, labels, w, entropy=False):
    x = logits.detach().clone().requires_grad_()
    lp, ent = token_logprobs(x, labels, return_entropy=True, backend="cpu")
    loss = (lp * w).sum() + (ent * w.flip(0)).sum() if entropy else (lp * w).sum()
    (g,) = torch.autograd.grad(loss, x)
    return g


def expected(logits, labels, w, entropy=False):
    x = logits.detach().double().requires_grad_()
    from smtpo_fast.ops import token_logprobs_reference

    lp, ent = token_logprobs_reference(x, labels, return_entropy=True)
    loss = (lp * w.double()).sum() + (ent * w.flip(0).double()).sum() if entropy else (lp * w.double()).sum()
    (g,) = torch.autograd.grad(loss, x)
    return g.to(logits.dtype)


def tol(dtype):
    return dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)


def test_freed_gradient_buffer_is_reused():
    logits, labels, w = make(16, 1000)
    g1 = grad_of(logits, labels, w)
    assert _grad_cache.from_cache(g1)
    ptr = g1.data_ptr()
    del g1
    g2 = grad_of(logits, labels, w)
    assert g2.data_ptr() == ptr
    torch.testing.assert_close(g2, expected(logits, labels, w), **tol(torch.float32))
    assert grad_cache_info()["blocks"] == 1


def test_held_gradient_is_never_overwritten():
    logits, labels, w = make(16, 1000)
    g1 = grad_of(logits, labels, w)
    keep = g1.clone()
    l2, y2, w2 = make(16, 1000, seed=1)
    g2 = grad_of(l2, y2, w2)
    assert g2.data_ptr() != g1.data_ptr()
    assert torch.equal(g1, keep)
    torch.testing.assert_close(g2, expected(l2, y2, w2), **tol(torch.float32))


@pytest.mark.parametrize("keep", ["view", "storage", "slice_of_view", "list"])
def test_anything_referencing_the_buffer_keeps_it_out_of_the_cache(keep):
    logits, labels, w = make(16, 1000)
    g1 = grad_of(logits, labels, w)
    ptr = g1.data_ptr()
    if keep == "view":
        held = g1[3:, 5:9]
    elif keep == "storage":
        held = g1.untyped_storage()
    elif keep == "slice_of_view":
        held = g1.view(-1)[100:200].view(10, 10).t()
    else:
        held = [g1.view(16, 10, 100)]
    snapshot = g1.clone()
    del g1
    gc.collect()
    for seed in range(3):
        l2, y2, w2 = make(16, 1000, seed=seed + 1)
        g2 = grad_of(l2, y2, w2)
        assert g2.data_ptr() != ptr
        torch.testing.assert_close(g2, expected(l2, y2, w2), **tol(torch.float32))
    # The held memory still has the first gradient's values.
    whole = torch.empty(0).set_(held if keep == "storage" else (held[0] if keep == "list" else held).untyped_storage())
    assert torch.equal(whole[: snapshot.numel()].view_as(snapshot), snapshot)
    del held, whole
    g3 = grad_of(logits, labels, w)
    assert g3.data_ptr() == ptr  # free again once the last reference went


def test_leaf_grad_and_accumulation():
    """.backward() stores the gradient in x.grad (autograd steals it): it stays x's until x.grad is dropped, and a
    second backward into the same leaf accumulates correctly."""
    logits, labels, w = make(16, 1000)
    x = logits.clone().requires_grad_()
    (token_logprobs(x, labels, backend="cpu") * w).sum().backward()
    first = x.grad
    snapshot = first.clone()
    (token_logprobs(x, labels, backend="cpu") * w).sum().backward()
    ref = expected(logits, labels, w)
    torch.testing.assert_close(x.grad, 2 * ref, **tol(torch.float32))
    # Another leaf meanwhile: must not land on x.grad's buffer.
    y = logits.clone().requires_grad_()
    (token_logprobs(y, labels, backend="cpu") * w).sum().backward()
    torch.testing.assert_close(x.grad, 2 * ref, **tol(torch.float32))
    torch.testing.assert_close(y.grad, ref, **tol(torch.float32))
    assert y.grad.data_ptr() != x.grad.data_ptr()
    if x.grad.data_ptr() == first.data_ptr():  # accumulated in place into the stolen buffer
        assert not torch.equal(first, snapshot)
    x.grad = None
    del first


def test_many_calls_varying_shapes_dtypes_and_retention():
    rng = random.Random(0)
    kept = []
    for i in range(60):
        N = rng.choice([1, 3, 16, 40])
        V = rng.choice([7, 500, 1000, 1100, 4097])
        dtype = rng.choice([torch.float32, torch.bfloat16])
        entropy = rng.random() < 0.5
        logits, labels, w = make(N, V, dtype, seed=i)
        g = grad_of(logits, labels, w, entropy=entropy)
        assert g.shape == (N, V) and g.dtype == dtype and g.is_contiguous()
        torch.testing.assert_close(g, expected(logits, labels, w, entropy=entropy), **tol(dtype))
        if rng.random() < 0.3:
            kept.append((g, g.clone()))
        if rng.random() < 0.2 and kept:
            kept.pop(rng.randrange(len(kept)))
        assert grad_cache_info()["blocks"] <= _grad_cache.max_blocks()
        for held, snap in kept:
            assert torch.equal(held, snap)
    # No two live gradients share memory.
    spans = sorted((h.data_ptr(), h.data_ptr() + h.numel() * h.element_size()) for h, _ in kept)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_3d_and_strided_logits_gradients():
    logits, labels, w = make(24, 1000)
    x = logits.view(2, 12, 1000).clone().requires_grad_()
    lp = token_logprobs(x[:, :-1], labels.view(2, 12)[:, :-1], backend="cpu")
    (g,) = torch.autograd.grad((lp * w.view(2, 12)[:, :-1]).sum(), x)
    x2 = logits.view(2, 12, 1000).double().requires_grad_()
    from smtpo_fast.ops import token_logprobs_reference

    lp2 = token_logprobs_reference(x2[:, :-1], labels.view(2, 12)[:, :-1])
    (g2,) = torch.autograd.grad((lp2 * w.view(2, 12)[:, :-1].double()).sum(), x2)
    torch.testing.assert_close(g, g2.float(), rtol=1e-4, atol=1e-5)


def test_bound_on_blocks(monkeypatch):
    monkeypatch.setenv("SMTPO_GRAD_CACHE_BLOCKS", "1")
    logits, labels, w = make(16, 1000)
    g1 = grad_of(logits, labels, w)
    g2 = grad_of(logits, labels, w)  # the one block is in use: an ordinary tensor
    assert _grad_cache.from_cache(g1) and not _grad_cache.from_cache(g2)
    assert grad_cache_info()["blocks"] == 1
    torch.testing.assert_close(g2, g1)


def test_bigger_request_replaces_an_idle_smaller_block():
    small = grad_of(*make(4, 1000))
    del small
    info = grad_cache_info()
    big = grad_of(*make(600, 4097))  # 9.8 MB: past the 2 MiB smallest class
    assert _grad_cache.from_cache(big)
    after = grad_cache_info()
    assert after["blocks"] == 1 and after["bytes"] > info["bytes"]
    # A smaller request reuses the bigger idle block.
    ptr = big.data_ptr()
    del big
    g = grad_of(*make(8, 500))
    assert g.data_ptr() == ptr


def test_switch_off_and_empty(monkeypatch):
    monkeypatch.setenv("SMTPO_GRAD_CACHE", "0")
    logits, labels, w = make(16, 1000)
    g = grad_of(logits, labels, w)
    assert not _grad_cache.from_cache(g) and grad_cache_info()["blocks"] == 0
    torch.testing.assert_close(g, expected(logits, labels, w), **tol(torch.float32))
    monkeypatch.setenv("SMTPO_GRAD_CACHE", "1")
    g = grad_of(logits, labels, w)
    assert grad_cache_info()["idle_bytes"] == 0
    nbytes = grad_cache_info()["bytes"]
    del g
    assert grad_cache_info()["idle_bytes"] == nbytes
    assert empty_grad_cache() == nbytes
    assert grad_cache_info()["blocks"] == 0


def test_empty_while_in_use_forgets_the_block():
    logits, labels, w = make(16, 1000)
    g = grad_of(logits, labels, w)
    snapshot = g.clone()
    assert empty_grad_cache() == 0  # nothing idle; the block in use is forgotten, not unmapped
    assert grad_cache_info()["blocks"] == 0
    g2 = grad_of(logits, labels, w)
    assert g2.data_ptr() != g.data_ptr() and torch.equal(g, snapshot)


def test_other_backends_and_inplace_do_not_use_it():
    logits, labels, w = make(16, 1000)
    x = logits.clone().requires_grad_()
    (g,) = torch.autograd.grad((token_logprobs(x, labels, backend="torch") * w).sum(), x)
    x = logits.clone().requires_grad_()
    (g,) = torch.autograd.grad((token_logprobs(x, labels, backend="cpu", inplace_backward=True) * w).sum(), x)
    assert grad_cache_info()["blocks"] == 0


def test_below_min_bytes_is_not_cached(monkeypatch):
    monkeypatch.setattr(_grad_cache, "MIN_BYTES", 1 << 30)
    g = grad_of(*make(16, 1000))
    assert not _grad_cache.from_cache(g) and grad_cache_info()["blocks"] == 0


def test_size_class():
    MiB = 1 << 20
    prev = 0
    for n in [1, MiB, 2 * MiB, 2 * MiB + 1, 5 * MiB, 100 * MiB, 768 * MiB, 768 * MiB + 1, 3000 * MiB]:
        c = _grad_cache.size_class(n)
        assert c >= n and c % (2 * MiB) == 0 and c >= prev
        assert c <= max(2 * MiB, -(-n // (2 * MiB)) * 2 * MiB * 1.125)
        prev = c
    assert _grad_cache.size_class(768 * MiB) == 768 * MiB  # the 4096 x 49152 float32 gradient fits exactly


def test_concurrent_backwards_get_distinct_correct_buffers():
    errors = []
    cases = [make(16, 1000, seed=s) for s in range(4)]
    refs = [expected(*c) for c in cases]

    def worker(k):
        try:
            for i in range(10):
                c = (k + i) % len(cases)
                g = grad_of(*cases[c])
                torch.testing.assert_close(g, refs[c], rtol=1e-4, atol=1e-5)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_under_torch_compile():
    logits, labels, w = make(16, 1000)
    x = logits.clone().requires_grad_()

    def loss(x):
        return (token_logprobs(x, labels, backend="cpu") * w).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    for _ in range(3):
        (g,) = torch.autograd.grad(compiled(x), x)
        assert _grad_cache.from_cache(g)
        torch.testing.assert_close(g, expected(logits, labels, w), rtol=1e-4, atol=1e-5)
