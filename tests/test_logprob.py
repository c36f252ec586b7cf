"""token_logprobs against its float64 reference on every backend built here, plus gradients, edges and bad input."""

import math
import warnings

import pytest
import torch

import smtpo_fast
from smtpo_fast import _ext
from smtpo_fast.ops import token_logprobs, token_logprobs_reference
from helpers import assert_close, backend_device_pairs

PAIRS = backend_device_pairs()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def reference(logits, labels, temperature=1.0, ignore_index=-100):
    """float64 reference on the same (possibly rounded) values, with float64 gradients."""
    x = logits.detach().double().cpu().requires_grad_()
    lp, ent = token_logprobs_reference(x, labels.cpu(), temperature, ignore_index, return_entropy=True)
    return x, lp, ent


def grad_tol(dtype):
    # Gradients come back in the logits' dtype: bf16 keeps 8 bits of mantissa, fp16 11.
    return {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]


def run_case(backend, device, logits, labels, *, temperature=1.0, ignore_index=-100, check_grad=True):
    logits = logits.to(device)
    labels = labels.to(device)
    x = logits.detach().clone().requires_grad_()
    lp, ent = token_logprobs(x, labels, temperature=temperature, ignore_index=ignore_index, return_entropy=True,
                             backend=backend)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    assert lp.shape == labels.shape and ent.shape == labels.shape
    xr, rlp, rent = reference(logits, labels, temperature, ignore_index)
    assert_close(lp, rlp, rtol=1e-5, atol=2e-5, what="logp")
    assert_close(ent, rent, rtol=1e-5, atol=2e-5, what="entropy")
    if not check_grad:
        return
    # Random upstream weights on both outputs, so both gradient terms are exercised.
    g1 = torch.randn(labels.shape, dtype=torch.float64)
    g2 = torch.randn(labels.shape, dtype=torch.float64)
    (lp * g1.float().to(device)).sum().add((ent * g2.float().to(device)).sum()).backward()
    finite = torch.isfinite(rlp) & torch.isfinite(rent)
    ((rlp * g1)[finite].sum() + (rent * g2)[finite].sum()).backward()
    assert x.grad.dtype == logits.dtype
    if x.grad.numel() == 0:
        return
    scale = xr.grad.abs().max().item() + 1e-30
    tol = grad_tol(logits.dtype) * max(scale, 1.0)
    rows = finite.reshape(-1)
    assert_close(x.grad.reshape(-1, logits.shape[-1])[rows.to(device)], xr.grad.reshape(-1, logits.shape[-1])[rows],
                 rtol=grad_tol(logits.dtype), atol=tol, what="grad")


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("V", [1, 7, 1000, 4097, 32000, 49152])
def test_matches_reference_random(backend, device, dtype, V):
    torch.manual_seed(V)
    N = 5 if V >= 32000 else 33
    logits = (torch.randn(N, V) * 3).to(dtype)
    labels = torch.randint(0, V, (N,))
    labels[1] = -100
    run_case(backend, device, logits, labels)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_nasty_logits(backend, device, dtype):
    torch.manual_seed(1)
    V = 3001  # not a multiple of any block size
    rows = []
    rows.append(torch.randn(V) - 1000.0)                       # all negative, far from 0
    rows.append(torch.randn(V) * 1e4)                          # huge magnitudes
    r = torch.randn(V); r[::3] = -math.inf; rows.append(r)     # -inf entries
    r = torch.randn(V); r[:-1] = -math.inf; rows.append(r)     # one finite entry
    rows.append(torch.full((V,), 7.0))                         # uniform
    logits = torch.stack(rows).to(dtype)
    labels = torch.tensor([5, 17, 3, V - 1, 0])                # row 2: label at a -inf logit
    run_case(backend, device, logits, labels)
    lp = token_logprobs(logits.to(device), labels.to(device), backend=backend)
    assert lp[2].item() == -math.inf
    assert lp[3].item() == 0.0


@pytest.mark.parametrize("backend,device", PAIRS)
def test_all_inf_row_is_nan_like_reference(backend, device):
    logits = torch.randn(3, 100)
    logits[1] = -math.inf
    labels = torch.tensor([1, 2, 3])
    lp, ent = token_logprobs(logits.to(device), labels.to(device), return_entropy=True, backend=backend)
    ref_lp, ref_ent = token_logprobs_reference(logits.double(), labels, return_entropy=True)
    assert torch.isnan(ref_lp[1]) and torch.isnan(lp[1].cpu())
    assert torch.isnan(ref_ent[1]) and torch.isnan(ent[1].cpu())
    assert_close(lp[[0, 2]], ref_lp[[0, 2]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("temperature", [0.7, 2.5])
def test_temperature_and_custom_ignore_index(backend, device, temperature):
    torch.manual_seed(2)
    logits = torch.randn(2, 9, 517)
    labels = torch.randint(0, 517, (2, 9))
    labels[0, 3] = 0 - 1
    run_case(backend, device, logits, labels, temperature=temperature, ignore_index=-1)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_non_contiguous_inputs(backend, device, dtype):
    torch.manual_seed(3)
    full = torch.randn(3, 8, 1031).to(dtype)
    logits = full[:, :-1, :]            # the usual shift: strided rows, no copy
    labels = torch.randint(0, 1031, (3, 8))[:, 1:]
    assert not logits.is_contiguous() and not labels.is_contiguous()
    run_case(backend, device, logits, labels)
    # Transposed storage (vocab not unit-stride) is accepted too.
    tr = torch.randn(1031, 6).to(dtype).t()
    run_case(backend, device, tr, torch.randint(0, 1031, (6,)))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_empty_and_single_row(backend, device):
    for N in (0, 1):
        logits = torch.randn(N, 300)
        labels = torch.randint(0, 300, (N,))
        run_case(backend, device, logits, labels)
    lp = token_logprobs(torch.randn(2, 0, 50, device=device), torch.zeros(2, 0, dtype=torch.long, device=device),
                        backend=backend)
    assert lp.shape == (2, 0)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_inplace_backward(backend, device, dtype):
    torch.manual_seed(4)
    base = torch.randn(4, 7, 333).to(dtype).to(device)
    labels = torch.randint(0, 333, (4, 7), device=device)
    labels[0, 0] = -100
    x1 = base.clone().requires_grad_()
    token_logprobs(x1, labels, backend=backend).sum().backward()
    leaf = base.clone().requires_grad_()
    x2 = leaf * 1  # a non-leaf buffer the backward may overwrite
    token_logprobs(x2, labels, backend=backend, inplace_backward=True).sum().backward()
    assert_close(leaf.grad, x1.grad, rtol=0, atol=0, what="in-place grad")
    # The logits' storage now holds the gradient (that is the memory saving).
    assert_close(x2.detach(), x1.grad, rtol=0, atol=0, what="logits buffer after in-place backward")


def test_gradcheck_float64_reference_path():
    torch.manual_seed(5)
    logits = torch.randn(4, 11, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 10, -100, 4])

    def f(x):
        lp, ent = token_logprobs(x, labels, temperature=1.3, return_entropy=True, backend="torch")
        return lp, ent

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(lambda x: token_logprobs_reference(x, labels, 1.3), (logits,))


def test_bad_input_names_the_argument():
    x = torch.randn(4, 10)
    y = torch.randint(0, 10, (4,))
    with pytest.raises(TypeError, match="logits"):
        token_logprobs(x.long(), y)
    with pytest.raises(TypeError, match="labels"):
        token_logprobs(x, y.float())
    with pytest.raises(ValueError, match="labels: shape"):
        token_logprobs(x, y[:3])
    with pytest.raises(ValueError, match="logits"):
        token_logprobs(torch.randn(10), y)
    with pytest.raises(ValueError, match="labels"):
        token_logprobs(x, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match="labels"):
        token_logprobs(x, torch.tensor([0, -5, 1, 2]))
    with pytest.raises(ValueError, match="labels: on meta"):
        token_logprobs(x, y.to("meta"))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(x, y, temperature=0.0)
    with pytest.raises(ValueError, match="logits: vocabulary"):
        token_logprobs(torch.randn(4, 0), y.clamp(max=-1) * 0 - 100)
    with pytest.raises(ValueError, match="backend"):
        token_logprobs(x, y, backend="tpu")
    with pytest.raises(TypeError, match="logits"):
        token_logprobs("not a tensor", y)


def test_torch_compile_traces_around_the_op():
    logits = torch.randn(6, 257, requires_grad=True)
    labels = torch.randint(0, 257, (6,))

    def loss(x):
        return -(token_logprobs(x, labels, return_entropy=True)[0] * 2).mean()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    out = compiled(logits)
    out.backward()
    g = logits.grad.clone()
    logits.grad = None
    loss(logits).backward()
    assert_close(out, loss(logits), rtol=1e-6, atol=1e-6)
    assert_close(g, logits.grad, rtol=1e-6, atol=1e-7)


def test_fallback_to_reference_warns_once(monkeypatch):
    monkeypatch.setattr(_ext, "native", lambda: None)
    monkeypatch.setattr(_ext, "_warned", set())
    monkeypatch.delenv("SMTPO_BACKEND", raising=False)
    x = torch.randn(3, 20)
    y = torch.randint(0, 20, (3,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = token_logprobs(x, y)
        token_logprobs(x, y)
    msgs = [w for w in caught if "torch reference" in str(w.message)]
    assert len(msgs) == 1
    assert_close(a, token_logprobs_reference(x.double(), y), rtol=1e-6, atol=1e-6)
    assert smtpo_fast.ops.backends()["cpu"] is False


def test_backends_report():
    info = smtpo_fast.ops.backends()
    assert info["torch"] is True
    assert set(_ext.BACKENDS) <= set(info)
    if info["cpu"]:
        assert info["cpu_isa"] in ("base", "avx2", "avx512")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_env_var_forces_backend(backend, device, monkeypatch):
    monkeypatch.setenv("SMTPO_BACKEND", backend)
    assert _ext.select("token_logprobs", torch.device(device)) == backend
