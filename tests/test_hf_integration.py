"""causal_lm_token_logprobs / causal_lm_nll on tiny HF Llama and Qwen2 models built from config (no downloads).

The reference is the model's own logits: ``model(...).logits`` -> shift -> / temperature -> log_softmax -> gather,
in float64; gradients of every parameter (tied embeddings and LoRA adapters included) must match that path's.
"""

import pytest
import torch

from smtpo_fast.integrations import causal_lm_nll, causal_lm_token_logprobs
from helpers import assert_close, backend_device_pairs

transformers = pytest.importorskip("transformers")

PAIRS = backend_device_pairs()
VOCAB = 1000


def tiny_model(family: str):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(tie_word_embeddings=False, **common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(tie_word_embeddings=True, **common))
        assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():  # a random init gives near-uniform logits; spread them so log-probs differ per token
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


def batch(B=3, T=13, pad=(0, 4, 2), seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, p in enumerate(pad[:B]):
        mask[b, :p] = 0  # left padding, as generation batches have
    return ids, mask


def reference_logprobs(model, ids, mask, temperature=1.0, keep=None):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].double() / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    valid = mask[:, 1:] == 1
    logp = logp * valid
    if keep is not None:
        logp, entropy, valid = logp[:, -keep:], entropy[:, -keep:], valid[:, -keep:]
    return logp, entropy, valid


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_logprobs_entropy_and_grads_match_model_logits(family, backend, device):
    model = tiny_model(family).to(device)
    ids, mask = batch()
    ids, mask = ids.to(device), mask.to(device)
    temperature, keep = 0.8, 9
    adv = torch.randn(3, keep, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)

    lp, ent = causal_lm_token_logprobs(model, ids, mask, logits_to_keep=keep, temperature=temperature,
                                       return_entropy=True, backend=backend)
    assert lp.shape == (3, keep) and lp.dtype == torch.float32
    (-(lp * adv.float()).sum() - 0.1 * ent.sum()).backward()
    fused = grads(model)
    model.zero_grad()

    rlp, rent, valid = reference_logprobs(model, ids, mask, temperature, keep)
    (-(rlp * adv).sum() - 0.1 * (rent * valid).sum()).backward()
    ref = grads(model)
    assert_close(lp, rlp, rtol=1e-4, atol=1e-4, what="logp")
    # Masked positions are skipped by the head (entropy 0 there); scored ones match.
    assert_close(ent[valid], rent[valid], rtol=1e-4, atol=1e-4, what="entropy")
    assert bool((ent[~valid] == 0).all())
    assert fused.keys() == ref.keys()
    for name in ref:
        scale = ref[name].abs().max().item() + 1e-6
        assert_close(fused[name], ref[name], rtol=2e-3, atol=2e-4 * scale, what=f"grad {name}")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_nll_equals_hf_loss_with_prompt_labels(family):
    model = tiny_model(family)
    ids, mask = batch(seed=3)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, 4:7] = -100  # prompt tokens not trained on
    loss = causal_lm_nll(model, ids, mask, labels=labels, chunk_size=8)
    loss.backward()
    fused = grads(model)
    model.zero_grad()
    ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    ref.backward()
    assert_close(loss, ref, rtol=1e-5, atol=1e-5, what="loss")
    for name, g in grads(model).items():
        assert_close(fused[name], g, rtol=2e-3, atol=2e-4 * (g.abs().max().item() + 1e-6), what=f"grad {name}")


def test_peft_lora_model():
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(tiny_model("llama"), lora)
    with torch.no_grad():  # LoRA B starts at 0: make the adapters matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids, mask = batch(seed=4)
    lp = causal_lm_token_logprobs(model, ids, mask)
    lp.sum().backward()
    fused = grads(model)
    assert fused and all("lora_" in n for n in fused), "only the adapters train"
    model.zero_grad()
    rlp, _, _ = reference_logprobs(model, ids, mask)
    rlp.sum().backward()
    assert_close(lp, rlp, rtol=1e-4, atol=1e-4, what="logp")
    for name, g in grads(model).items():
        assert_close(fused[name], g, rtol=2e-3, atol=2e-4 * (g.abs().max().item() + 1e-6), what=f"grad {name}")


def test_lora_on_lm_head_falls_back_to_real_logits():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(r=4, target_modules=["lm_head"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids, mask = batch(seed=5)
    with pytest.warns(RuntimeWarning, match="not a plain nn.Linear"):
        lp = causal_lm_token_logprobs(model, ids, mask)
    rlp, _, _ = reference_logprobs(model, ids, mask)
    assert_close(lp, rlp, rtol=1e-4, atol=1e-4, what="logp")


def test_all_rows_scored_when_not_skipping_masked():
    model = tiny_model("qwen2")
    ids, mask = batch(seed=6)
    lp, ent = causal_lm_token_logprobs(model, ids, None, return_entropy=True, skip_masked=False, chunk_size=5)
    rlp, rent, _ = reference_logprobs(model, ids, torch.ones_like(ids))
    assert_close(lp, rlp, rtol=1e-4, atol=1e-4, what="logp")
    assert_close(ent, rent, rtol=1e-4, atol=1e-4, what="entropy")


def test_bad_input():
    model = tiny_model("llama")
    ids, mask = batch()
    with pytest.raises(ValueError, match="input_ids"):
        causal_lm_token_logprobs(model, ids[0], mask[0])
    with pytest.raises(ValueError, match="logits_to_keep"):
        causal_lm_token_logprobs(model, ids, mask, logits_to_keep=ids.shape[1])
    with pytest.raises(ValueError, match="attention_mask"):
        causal_lm_token_logprobs(model, ids, mask[:, 1:])
    with pytest.raises(ValueError, match="labels"):
        causal_lm_token_logprobs(model, ids, mask, labels=ids[:, 1:])
    with pytest.raises(TypeError, match="model"):
        causal_lm_token_logprobs(torch.nn.Linear(3, 3), ids, mask)
