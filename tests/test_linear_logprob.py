"""linear_token_logprobs against its float64 reference (matmul -> log_softmax -> gather) on every backend built here.

Log-probs, entropy and the gradients of hidden, weight and bias; vocabulary tiles that do not divide V, token tiles,
ignore_index, temperature, bias / no bias, -inf bias entries, tied weights, low-precision inputs, N = 1 and N = 0,
memory (nothing of size N x V is kept for backward) and bad input.
"""

import math

import pytest
import torch

from smtpo_fast.ops import linear_token_logprobs, linear_token_logprobs_reference
from smtpo_fast.ops import linear_logprob as LL
from helpers import assert_close, backend_device_pairs

PAIRS = backend_device_pairs()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (value tolerance, gradient tolerance relative to the largest reference gradient) per input dtype. Low-precision
# inputs round the logits tile (and d logits) to 8 / 11 mantissa bits before the float32 softmax.
TOL = {torch.float32: (2e-5, 5e-5), torch.bfloat16: (6e-2, 3e-2), torch.float16: (8e-3, 5e-3)}


def make_inputs(seed, N, H, V, dtype, *, bias=True, scale=3.0, ignore_index=-100, n_ignored=1, neg_inf_bias=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * (scale / math.sqrt(H))
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    labels = torch.randint(0, V, (N,), generator=g)
    if n_ignored:
        labels[torch.randperm(N, generator=g)[:n_ignored]] = ignore_index
    if neg_inf_bias:
        # Mask columns no row has as its label, as a vocabulary restriction would.
        free = torch.ones(V, dtype=torch.bool)
        free[labels[(labels >= 0) & (labels < V)]] = False
        cols = free.nonzero().squeeze(1)[:neg_inf_bias]
        b[cols] = -math.inf
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(hidden), cast(weight), cast(b), labels


def run_case(backend, device, hidden, weight, bias, labels, *, temperature=1.0, ignore_index=-100,
             chunk_size=None, vocab_chunk_size=None, entropy_grad=True, logp_grad=True):
    dtype = hidden.dtype
    vtol, gtol = TOL[dtype]
    dev = torch.device(device)
    h = hidden.detach().to(dev).requires_grad_()
    w = weight.detach().to(dev).requires_grad_()
    b = None if bias is None else bias.detach().to(dev).requires_grad_()
    lp, ent = linear_token_logprobs(h, w, labels.to(dev), bias=b, temperature=temperature, ignore_index=ignore_index,
                                    return_entropy=True, chunk_size=chunk_size, vocab_chunk_size=vocab_chunk_size,
                                    backend=backend)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    assert lp.shape == labels.shape and ent.shape == labels.shape
    # The reference sees the same (rounded) inputs, in float64.
    hr = hidden.detach().double().requires_grad_()
    wr = weight.detach().double().requires_grad_()
    br = None if bias is None else bias.detach().double().requires_grad_()
    rlp, rent = linear_token_logprobs_reference(hr, wr, labels, br, temperature, ignore_index, return_entropy=True)
    assert_close(lp, rlp, rtol=vtol, atol=vtol, what="logp")
    assert_close(ent, rent, rtol=vtol, atol=vtol, what="entropy")
    assert bool((lp[labels.to(dev) == ignore_index] == 0).all()), "ignored rows must have log-prob exactly 0"

    g = torch.Generator().manual_seed(labels.numel())
    g1 = torch.randn(labels.shape, generator=g, dtype=torch.float64) * logp_grad
    g2 = torch.randn(labels.shape, generator=g, dtype=torch.float64) * entropy_grad
    loss = 0.0
    if logp_grad:
        loss = loss + (lp * g1.float().to(dev)).sum()
    if entropy_grad:
        loss = loss + (ent * g2.float().to(dev)).sum()
    loss.backward()
    ((rlp * g1).sum() + (rent * g2).sum()).backward()
    for name, got, ref in (("d hidden", h.grad, hr.grad), ("d weight", w.grad, wr.grad),
                           ("d bias", None if b is None else b.grad, None if br is None else br.grad)):
        if ref is None:
            continue
        assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected the input's {dtype}"
        scale = max(ref.abs().max().item(), 1e-3)
        assert_close(got, ref, rtol=gtol, atol=gtol * scale, what=name)


CASES = {
    # name: (N, H, V, chunk_size, vocab_chunk_size, bias, temperature)
    "whole-vocab-tiles": (33, 16, 301, 8, None, True, 1.0),
    "vocab-tiles-not-dividing-V": (33, 16, 301, 8, 64, True, 0.7),
    "auto-plan-no-bias": (33, 16, 301, None, None, False, 1.3),
    "one-row": (1, 16, 301, None, 100, True, 2.0),
    "one-column-tiles-edge": (9, 8, 129, 4, 128, False, 1.0),
}


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(backend, device, dtype, case):
    N, H, V, chunk, vchunk, bias, temp = CASES[case]
    hidden, weight, b, labels = make_inputs(list(CASES).index(case), N, H, V, dtype, bias=bias, n_ignored=min(2, N - 1))
    run_case(backend, device, hidden, weight, b, labels, temperature=temp, chunk_size=chunk, vocab_chunk_size=vchunk)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_ignore_index_inside_vocab_and_only_logp_grad(backend, device):
    # ignore_index = 5 is a real token id: local labels of a vocabulary tile must never be confused with it.
    hidden, weight, b, labels = make_inputs(3, 40, 12, 200, torch.float32, ignore_index=5, n_ignored=6)
    labels[0] = 64 + 5  # the label 5 columns into the second 64-wide tile
    run_case(backend, device, hidden, weight, b, labels, ignore_index=5, chunk_size=16, vocab_chunk_size=64,
             entropy_grad=False)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_neg_inf_bias_and_only_entropy_grad(backend, device):
    hidden, weight, b, labels = make_inputs(4, 20, 12, 150, torch.float32, neg_inf_bias=40)
    run_case(backend, device, hidden, weight, b, labels, chunk_size=7, vocab_chunk_size=50, logp_grad=False)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_all_rows_ignored(backend, device):
    hidden, weight, b, labels = make_inputs(5, 6, 8, 70, torch.float32)
    labels[:] = -100
    run_case(backend, device, hidden, weight, b, labels, vocab_chunk_size=32)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_large_logits(backend, device):
    # Logits of size ~100: exp overflows unless every tile merge works relative to the running max.
    hidden, weight, b, labels = make_inputs(6, 24, 16, 257, torch.float32, scale=40.0)
    run_case(backend, device, hidden, weight, b, labels, chunk_size=10, vocab_chunk_size=96)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_low_precision_d_hidden_in_row_blocks(backend, device, monkeypatch):
    # bf16 d hidden products are added to the float32 accumulator a few rows at a time: blocks must tile the rows.
    monkeypatch.setattr(LL, "_DH_BLOCK_ROWS", 5)
    hidden, weight, b, labels = make_inputs(12, 23, 16, 130, torch.bfloat16)
    run_case(backend, device, hidden, weight, b, labels, vocab_chunk_size=64)


def test_float64_runs_exactly_on_torch_backend():
    hidden, weight, b, labels = make_inputs(7, 17, 10, 90, torch.float64)
    h = hidden.clone().requires_grad_()
    lp, ent = linear_token_logprobs(h, weight, labels, bias=b, return_entropy=True, vocab_chunk_size=32,
                                    backend="torch")
    rlp, rent = linear_token_logprobs_reference(hidden, weight, labels, b, return_entropy=True)
    assert lp.dtype == torch.float64
    assert_close(lp, rlp, rtol=1e-12, atol=1e-12, what="logp")
    assert_close(ent, rent, rtol=1e-12, atol=1e-12, what="entropy")
    with pytest.raises(TypeError, match="hidden: float64"):
        linear_token_logprobs(hidden, weight, labels, backend="cpu")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_tied_weights_sum_both_gradients(backend, device):
    # The LM head is the input embedding: its gradient is the head's plus the embedding lookup's.
    torch.manual_seed(8)
    V, H, B, T = 97, 16, 3, 11
    table = torch.randn(V, H, dtype=torch.float64) * 0.5
    ids = torch.randint(0, V, (B, T))
    mix = torch.randn(H, H, dtype=torch.float64) / math.sqrt(H)

    def forward(emb_weight, fused):
        hidden = torch.tanh(emb_weight[ids[:, :-1].to(emb_weight.device)] @ mix)  # [B, T-1, H]: a stand-in body
        if fused:
            return linear_token_logprobs(hidden, emb_weight, ids[:, 1:].to(emb_weight.device), chunk_size=8,
                                         vocab_chunk_size=40, backend=backend)
        return linear_token_logprobs_reference(hidden, emb_weight, ids[:, 1:])

    dev = torch.device(device)
    mix = mix.float().to(dev)
    w = table.float().to(dev).requires_grad_()
    lp = forward(w, True)
    assert lp.shape == (B, T - 1)
    lp.sum().backward()
    mix = mix.double().cpu()
    wr = table.clone().requires_grad_()
    rlp = forward(wr, False)
    rlp.sum().backward()
    assert_close(lp, rlp, rtol=2e-5, atol=2e-5, what="logp")
    assert_close(w.grad, wr.grad, rtol=5e-5, atol=5e-5 * wr.grad.abs().max().item(), what="tied d weight")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_frozen_head_and_frozen_hidden(backend, device):
    hidden, weight, b, labels = make_inputs(9, 15, 8, 60, torch.float32)
    dev = torch.device(device)
    h = hidden.clone().to(dev).requires_grad_()
    linear_token_logprobs(h, weight.to(dev), labels.to(dev), bias=b.to(dev), vocab_chunk_size=32,
                          backend=backend).sum().backward()
    hr = hidden.double().requires_grad_()
    linear_token_logprobs_reference(hr, weight.double(), labels, b.double()).sum().backward()
    assert_close(h.grad, hr.grad, rtol=5e-5, atol=5e-5, what="d hidden (frozen head)")
    w = weight.clone().to(dev).requires_grad_()
    linear_token_logprobs(hidden.to(dev), w, labels.to(dev), backend=backend).sum().backward()
    wr = weight.double().requires_grad_()
    linear_token_logprobs_reference(hidden.double(), wr, labels).sum().backward()
    assert_close(w.grad, wr.grad, rtol=5e-5, atol=5e-5, what="d weight (frozen hidden)")


def test_empty_batch():
    hidden = torch.zeros(0, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    lp, ent = linear_token_logprobs(hidden, weight, torch.zeros(0, dtype=torch.long), return_entropy=True)
    assert lp.shape == (0,) and ent.shape == (0,)
    (lp.sum() + ent.sum()).backward()
    assert hidden.grad.shape == (0, 8)
    assert weight.grad is not None and bool((weight.grad == 0).all())


def test_backward_keeps_no_logits():
    # Everything autograd keeps for backward: the inputs and O(N) per-row statistics, nothing of size N x V.
    N, H, V = 64, 8, 500
    hidden, weight, b, labels = make_inputs(10, N, H, V, torch.float32)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, ent = linear_token_logprobs(h, w, labels, bias=b, return_entropy=True, chunk_size=16)
    assert sum(saved) <= h.numel() + w.numel() + b.numel() + 4 * N, saved
    assert max(saved) < N * V


def test_plan_respects_budget_and_shapes():
    budget = 64 << 20
    for N, V, elem in [(8192, 151936, 2), (8192, 49152, 4), (1, 151936, 4), (100, 7, 2), (50000, 256000, 2)]:
        fr, fc, br, bc = LL._plan(N, V, elem, budget, None, None)
        assert 1 <= fr <= N and 1 <= fc <= V and 1 <= br <= N and 1 <= bc <= V
        assert fr * fc * elem <= budget and br * bc * elem <= budget
        assert fc == V or fc % LL._MIN_VOCAB_TILE == 0
    assert LL._plan(1000, 300, 4, budget, 64, None)[:2] == (64, 300)
    assert LL._plan(1000, 300, 4, budget, 64, 100) == (64, 100, 64, 100)


def test_leading_dims_and_int32_labels():
    hidden, weight, b, labels = make_inputs(11, 12, 8, 50, torch.float32)
    lp = linear_token_logprobs(hidden.view(3, 4, 8), weight, labels.view(3, 4).int(), bias=b)
    assert lp.shape == (3, 4)
    assert_close(lp.reshape(-1), linear_token_logprobs_reference(hidden.double(), weight.double(), labels, b.double()),
                 rtol=2e-5, atol=2e-5, what="logp")


def test_bad_input_names_the_argument():
    h = torch.randn(4, 8)
    w = torch.randn(10, 8)
    y = torch.randint(0, 10, (4,))
    bad = [
        (dict(hidden=h.long()), TypeError, "hidden: expected dtype"),
        (dict(weight=torch.randn(10, 7)), ValueError, "weight: expected shape"),
        (dict(weight=w.double()), TypeError, "weight: dtype"),
        (dict(weight=torch.randn(10)), ValueError, "weight: expected 2"),
        (dict(labels=y.float()), TypeError, "labels: expected dtype"),
        (dict(labels=torch.randint(0, 10, (5,))), ValueError, "labels: shape"),
        (dict(labels=torch.tensor([0, 1, 10, 2])), ValueError, r"labels: values must be in \[0, 10\)"),
        (dict(labels=torch.tensor([0, -1, 3, 2])), ValueError, "labels: values"),
        (dict(bias=torch.randn(9)), ValueError, "bias: expected shape"),
        (dict(bias=torch.randn(10).half()), TypeError, "bias: dtype"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(ignore_index=1.5), TypeError, "ignore_index"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(chunk_size=True), TypeError, "chunk_size"),
        (dict(vocab_chunk_size=-3), ValueError, "vocab_chunk_size"),
        (dict(backend="nope"), ValueError, "backend"),
        (dict(hidden=[[1.0] * 8] * 4), TypeError, "hidden: expected a torch.Tensor"),
    ]
    for override, exc, msg in bad:
        args = dict(hidden=h, weight=w, labels=y)
        kw = {k: v for k, v in override.items() if k not in args}
        args.update({k: v for k, v in override.items() if k in args})
        with pytest.raises(exc, match=msg):
            linear_token_logprobs(args["hidden"], args["weight"], args["labels"], **kw)
