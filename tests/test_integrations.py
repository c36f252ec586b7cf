"""TRL / verl drop-ins: same signature, values, dtype and gradients as the definitions they replace."""

import pytest
import torch

from smtpo_fast.integrations import logprobs_from_logits, selective_log_softmax
from helpers import assert_close


def trl_selective_log_softmax(logits, index):
    """TRL's definition (per-row loop for half precision, logsumexp otherwise)."""
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
        lse = torch.stack([torch.logsumexp(lg, dim=-1) for lg in logits])
        return selected - lse
    out = []
    for row_logits, row_labels in zip(logits, index):
        row = torch.log_softmax(row_logits, dim=-1)
        out.append(row.gather(dim=-1, index=row_labels.unsqueeze(-1)).squeeze(-1))
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_selective_log_softmax_matches_trl(dtype):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 1001).to(dtype)
    index = torch.randint(0, 1001, (3, 7))
    ours = selective_log_softmax(logits, index)
    theirs = trl_selective_log_softmax(logits, index)
    assert ours.dtype == theirs.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5  # TRL's bf16 path rounds the log-softmax row to bf16
    assert_close(ours, theirs, rtol=tol, atol=tol)


def test_selective_log_softmax_any_rank_and_grad():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 50, requires_grad=True)
    index = torch.randint(0, 50, (2, 3, 4))
    selective_log_softmax(logits, index).sum().backward()
    ref = logits.detach().clone().requires_grad_()
    trl_selective_log_softmax(ref.reshape(6, 4, 50), index.reshape(6, 4)).sum().backward()
    assert_close(logits.grad, ref.grad, rtol=1e-5, atol=1e-6)


def test_logprobs_from_logits_matches_verl():
    torch.manual_seed(2)
    logits = torch.randn(5, 6, 333, dtype=torch.bfloat16)
    labels = torch.randint(0, 333, (5, 6))
    out = logprobs_from_logits(logits, labels)
    ref = torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert out.dtype == torch.float32 and out.shape == labels.shape
    assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="index"):
        selective_log_softmax(logits, labels[:, :2])
