"""RolloutEngine on tiny random Llama / Qwen2 models built from config: greedy decoding equals HF generate on
ragged batches, extend equals a fresh prefill, fork, multi-turn, sampling log-probs, stop strings, bad input."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from smtpo_fast import _ext
from smtpo_fast.ops import sampling_logprobs_reference
from smtpo_fast.rollout import RolloutEngine
from helpers import assert_close

VOCAB, EOS, PAD = 300, 2, 0
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _attention_backends():
    out = []
    for dev in DEVICES:
        for name in _ext.BACKENDS:
            if _ext.available(name, torch.device(dev)):
                out.append(pytest.param(name, dev, id=f"{name}-{dev}"))
    return out


def tiny_model(kind: str, device="cpu", dtype=torch.float32):
    torch.manual_seed({"llama": 0, "qwen2": 1}[kind])
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512, bos_token_id=1,
                  eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.2)  # peaked logits: no near-ties
    model = (LlamaForCausalLM(LlamaConfig(**common)) if kind == "llama"
             else Qwen2ForCausalLM(Qwen2Config(**common)))
    model.config._attn_implementation = "sdpa"
    return model.to(device=device, dtype=dtype).eval()


def ragged_prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(model, prompts, new_tokens, eos=None):
    """HF generate on the left-padded batch; returns only the new tokens."""
    L = max(map(len, prompts))
    dev = next(model.parameters()).device
    ids = torch.tensor([[PAD] * (L - len(p)) + p for p in prompts], device=dev)
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=dev)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=PAD)
    return out[:, L:].cpu()


def full_logits(model, ids):
    dev = next(model.parameters()).device
    with torch.no_grad():
        return model(torch.tensor([ids], device=dev)).logits[0].double().cpu()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("device", DEVICES)
def test_greedy_equals_hf_generate_on_ragged_batch(kind, device):
    model = tiny_model(kind, device)
    prompts = ragged_prompts([5, 23, 1, 12])
    engine = RolloutEngine(model, max_batch=6, max_seq_len=96)
    conv = engine.start(prompts)
    out = engine.generate(conv, max_new_tokens=24, eos_token_id=[])
    ref = hf_greedy(model, prompts, 24)
    assert torch.equal(out.tokens.cpu(), ref), f"{kind}: engine {out.tokens.tolist()} vs HF {ref.tolist()}"
    assert out.mask.all() and out.num_tokens.tolist() == [24] * 4
    assert model.config._attn_implementation == "sdpa", "the engine must restore the model's attention"


@pytest.mark.parametrize("backend,device", _attention_backends())
def test_greedy_with_each_attention_backend_and_eos(backend, device):
    model = tiny_model("llama", device)
    prompts = ragged_prompts([7, 3, 15], seed=1)
    free = hf_greedy(model, prompts, 12)
    # An EOS that stops some rows mid-way: a token the first row generates at step 5.
    eos = int(free[0, 5])
    ref = hf_greedy(model, prompts, 12, eos=eos)
    engine = RolloutEngine(model, max_batch=4, max_seq_len=64, attention_backend=backend, poll_every=3)
    out = engine.generate(engine.start(prompts), max_new_tokens=12, eos_token_id=[eos])
    T = ref.shape[1]  # HF stops when every row is done
    assert torch.equal(out.tokens[:, :T].cpu(), ref), f"{backend}: {out.tokens.tolist()} vs {ref.tolist()}"
    assert not out.mask[:, T:].any()
    for b in range(3):
        n = int(out.num_tokens[b])
        row = out.tokens[b, :n].tolist()
        assert eos not in row[:-1] and (row[-1] == eos or n == 12)
        assert (out.tokens[b, n:] == PAD).all()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_extend_equals_fresh_prefill_and_multi_turn_equals_hf(kind):
    model = tiny_model(kind)
    prompts = ragged_prompts([9, 4, 17], seed=2)
    engine = RolloutEngine(model, max_batch=4, max_seq_len=128)
    conv = engine.start(prompts)
    engine.generate(conv, max_new_tokens=6, eos_token_id=[])
    turns = ragged_prompts([3, 8, 1], seed=3)
    engine.extend(conv, turns)
    assert conv.cached == [len(h) for h in conv.token_ids]  # the pending token went in with the turn
    for b in range(3):
        fresh = full_logits(model, conv.token_ids[b])[-1]
        assert_close(conv.next_logits[b], fresh, rtol=1e-4, atol=1e-4, what=f"{kind} extend row {b}")
    # Second answer: equal to HF generate over the whole history (row by row: histories are ragged).
    out = engine.generate(conv, max_new_tokens=8, eos_token_id=[])
    hist = [h[: len(h) - 8] for h in conv.token_ids]
    assert torch.equal(out.tokens.cpu(), hf_greedy(model, hist, 8))


def test_fork_shares_the_prefix_and_continues_like_the_source():
    model = tiny_model("llama")
    engine = RolloutEngine(model, max_batch=8, max_seq_len=64)
    root = engine.start(ragged_prompts([6, 11], seed=4))
    group = engine.fork(root, 3)
    engine.release(root)
    assert len(group) == 6 and engine.free_rows == 2
    assert group.token_ids[0] == group.token_ids[2] and group.token_ids[3] == group.token_ids[5]
    out = engine.generate(group, max_new_tokens=7, eos_token_id=[])
    ref = hf_greedy(model, [group.token_ids[0][:6], group.token_ids[3][:11]], 7)
    assert torch.equal(out.tokens.cpu(), ref.repeat_interleave(3, dim=0))
    # Forking after generate (a pending token per row) and extending each copy differently.
    engine.release(group)
    single = engine.start(ragged_prompts([5], seed=5))
    g2 = engine.fork(single, 2)
    engine.generate(g2, max_new_tokens=3, eos_token_id=[])
    engine.extend(g2, [[10, 11], [12]])
    for b in range(2):
        assert_close(g2.next_logits[b], full_logits(model, g2.token_ids[b])[-1], rtol=1e-4, atol=1e-4, what="fork")


def test_sampling_logprobs_match_a_recomputation():
    model = tiny_model("qwen2")
    prompts = ragged_prompts([8, 3], seed=6)
    engine = RolloutEngine(model, max_batch=2, max_seq_len=64)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=40, top_p=0.9, seed=5, eos_token_id=[])
    conv = engine.start(prompts)
    out = engine.generate(conv, **kw)
    engine.release(conv)
    again = engine.generate(engine.start(prompts), **kw)
    assert torch.equal(out.tokens, again.tokens), "seeded generation is not reproducible"
    for b, p in enumerate(prompts):
        seq = p + out.tokens[b].tolist()
        logits = full_logits(model, seq)[len(p) - 1: -1]  # logits that produced each generated token
        tok = out.tokens[b][:, None]
        ref1 = torch.log_softmax(logits, -1).gather(1, tok)[:, 0]
        assert_close(out.ref_logprobs[b], ref1, rtol=1e-4, atol=1e-4, what="temperature-1 log-probs")
        refs = sampling_logprobs_reference(logits.float(), temperature=0.8, top_k=40, top_p=0.9).gather(1, tok)[:, 0]
        assert_close(out.logprobs[b], refs, rtol=1e-4, atol=1e-4, what="sampling log-probs")


class _CharTokenizer:
    """Test double: one character per token id (enough for stop-string detection)."""

    eos_token_id, pad_token_id = EOS, PAD

    def decode(self, ids):
        return "".join(chr(ord("a") + t % 26) for t in ids)


def test_stop_strings_stop_at_the_completing_token_and_roll_back():
    model = tiny_model("llama")
    prompts = ragged_prompts([4, 9], seed=7)
    free = hf_greedy(model, prompts, 20)
    text = _CharTokenizer().decode(free[0].tolist())
    stop = text[9:11]  # ends at token 10 of row 0 (or earlier if it occurs before)
    first_end = text.find(stop) + len(stop) - 1
    engine = RolloutEngine(model, _CharTokenizer(), max_batch=2, max_seq_len=64, poll_every=4)
    conv = engine.start(prompts)
    out = engine.generate(conv, max_new_tokens=20, eos_token_id=[], stop_strings=[stop])
    assert int(out.num_tokens[0]) == first_end + 1
    assert torch.equal(out.tokens[0, : first_end + 1].cpu(), free[0, : first_end + 1])
    # The cache was rolled back: extending gives the logits of a fresh prefill of the truncated history.
    engine.extend(conv, [[5], [6]])
    for b in range(2):
        assert len(conv.token_ids[b]) == len(prompts[b]) + int(out.num_tokens[b]) + 1
        assert_close(conv.next_logits[b], full_logits(model, conv.token_ids[b])[-1], rtol=1e-4, atol=1e-4,
                     what="after stop-string rollback")


def test_bad_input_gives_clear_errors():
    model = tiny_model("llama")
    engine = RolloutEngine(model, max_batch=2, max_seq_len=16)
    with pytest.raises(ValueError, match="prompts: prompt 0 has 16 tokens"):
        engine.start([list(range(3, 19))])
    with pytest.raises(ValueError, match="max_batch=2"):
        engine.start([[3], [4], [5]])
    with pytest.raises(ValueError, match="outside"):
        engine.start([[3, VOCAB]])
    conv = engine.start([[3, 4, 5]])
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(conv, max_new_tokens=15)
    with pytest.raises(ValueError, match="batch: 2 new rows"):
        engine.fork(conv, 2)
    engine.release(conv)
    with pytest.raises(ValueError, match="released"):
        engine.generate(conv, max_new_tokens=2)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        RolloutEngine(gpt2, max_batch=2, max_seq_len=16)
    with pytest.raises(ValueError, match="max_batch"):
        RolloutEngine(model, max_batch=0, max_seq_len=16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,K", [(1, 5, 7), (3, 37, 16), (8, 49, 33), (11, 64, 100), (16, 13, 64),
                                   (8, 49, 64), (5, 100, 96), (16, 64, 128), (2, 33, 32)])  # last 4: AMX (bf16)
def test_skinny_linear_matches_a_float64_product(dtype, M, N, K):
    from smtpo_fast.rollout.cpu_linear import skinny_available, skinny_linear

    if not skinny_available():
        pytest.skip("native module not built")
    g = torch.Generator().manual_seed(M * 1000 + N + K)
    x = torch.randn(M, K + 3, generator=g).to(dtype)[:, :K]  # rows strided: row stride K + 3
    w = torch.randn(N, K, generator=g).to(dtype)
    b = torch.randn(N, generator=g).to(dtype)
    ref = x.double() @ w.double().T + b.double()
    # float32 accumulation, then one rounding to the output dtype (half an ulp of the largest output, at most).
    ulp = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}[dtype]
    tol = ulp * ref.abs().max().item() + 1e-5 * K ** 0.5
    assert (skinny_linear(x, w, b).double() - ref).abs().max() <= tol
    assert (skinny_linear(x, w).double() - (ref - b.double())).abs().max() <= tol


def test_skinny_cpu_linears_match_and_follow_weight_updates():
    from smtpo_fast.rollout.cpu_linear import SkinnyLinears, skinny_available

    if not skinny_available():
        pytest.skip("native module not built")
    lin = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Linear(24, 8, bias=False))
    skinny = SkinnyLinears(lin, max_rows=4)
    x = torch.randn(4, 1, 16)
    with torch.no_grad():
        ref = lin(x)
        with skinny.active():
            assert "forward" in lin[0].__dict__
            torch.testing.assert_close(lin(x), ref, rtol=1e-5, atol=1e-5)
            big = torch.randn(9, 16)  # over max_rows: plain path
            torch.testing.assert_close(lin(big), lin[1](torch.nn.functional.linear(big, lin[0].weight, lin[0].bias)))
        assert "forward" not in lin[0].__dict__, "the model's Linear forward must be restored"
        lin[0].weight.mul_(2.0)  # an optimizer-style in-place update: the kernel reads the weights in place
        with skinny.active():
            torch.testing.assert_close(lin(x), lin[1](torch.nn.functional.linear(x, lin[0].weight, lin[0].bias)),
                                       rtol=1e-5, atol=1e-5)
