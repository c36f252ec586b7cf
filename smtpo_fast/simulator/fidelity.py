"""Fidelity of a user simulator against what the data says the real seeker did.

Metrics (one row per simulator):
- acceptance accuracy and false-accept rate (predicted accept where the data says reject) on the recommendation
  turns whose acceptance the data labels (label-free: ReDial `liked` of the suggested movies / INSPIRED
  `coarse_label`; target-aware: whether the list holds the dialogue's accepted target);
- attribute precision: share of stated attributes the true target really has (label-free: the attribute-
  alignment answer from the history; target-aware: the liked attributes of its accepting replies);
- target Recall@1 / @10 (label-free): the new item of the turn among the simulator's beam-searched titles;
- title-leak rate (target-aware): openings and replies to non-target recommendations naming a target;
- perplexity of the real seeker utterances (their tokens only, under the same prompt).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..data.dialogue import RECOMMENDER
from ..train.data import IGNORE_INDEX, collate, tokenize_example
from .simulator import UserSimulator
from .tasks import (LABEL_FREE, TARGET_AWARE, TaskConfig, all_item_attributes, dialogue_episodes, feedback_prompt,
                    names_unrecommended_target)


@dataclass
class FidelityItem:
    """One evaluated recommendation turn."""

    history: list[dict]
    recommended: list[str]
    reply: str
    accepted: bool | None
    targets: list[str]
    new_target: str | None
    names: dict
    named_so_far: list[str]
    """Items named in the dialogue up to and including this recommendation (a target among them is no leak)."""


def fidelity_items(dialogues, catalog, mode: str, config: TaskConfig | None = None):
    """(items, openings): the turns to score and, for the target-aware simulator, (targets, names) per dialogue."""
    items, openings = [], []
    for dialogue in dialogues:
        episodes = dialogue_episodes(dialogue, catalog, config)
        if not episodes:
            continue
        if mode == TARGET_AWARE:
            if not episodes[0].dialogue_targets:
                continue
            openings.append((episodes[0].dialogue_targets, episodes[0].names))
        for e in episodes:
            if mode == TARGET_AWARE:
                accepted = any(i in e.dialogue_targets for i in e.recommended_ids)
            else:
                accepted = e.accepted
            items.append(FidelityItem(
                history=e.history + [{"role": RECOMMENDER, "text": e.recommendation}], recommended=e.recommended_ids,
                reply=" ".join(e.reply.split()), accepted=accepted, targets=e.dialogue_targets,
                new_target=e.new_ids[0] if e.new_ids else None, names=e.names,
                named_so_far=e.mentioned_ids + e.recommended_ids))
    return items, openings


def reply_nll(model, tokenizer, prompts: list[list[dict]], replies: list[str], batch_size: int = 8,
              max_length: int = 512) -> tuple[float, int]:
    """Summed NLL and token count of `replies` (their own tokens: the end-of-turn marker and whatever a
    simulator is trained to append after it are not scored) given the prompts."""
    import torch

    from ..train.sft import sequence_loss

    examples = []
    for prompt, reply in zip(prompts, replies):
        full = tokenize_example(tokenizer, prompt + [{"role": "assistant", "content": reply}], max_length)
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": reply}], tokenize=False)
        prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        suffix = text[len(prefix) + len(reply):]
        n_suffix = len(tokenizer(suffix, add_special_tokens=False)["input_ids"])
        labels = list(full["labels"])
        for i in range(max(0, len(labels) - n_suffix), len(labels)):
            labels[i] = IGNORE_INDEX
        examples.append({"input_ids": full["input_ids"], "labels": labels})
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size], tokenizer.pad_token_id).to(device)
            nll, n = sequence_loss(model, batch, torch.autocast("cuda", dtype=torch.bfloat16)
                                   if device.type == "cuda" else __import__("contextlib").nullcontext())
            total, count = total + float(nll), count + n
    model.train(was_training)
    return total, count


def evaluate_fidelity(simulator: UserSimulator, dialogues, catalog, recall_k: int = 10,
                      with_target_prediction: bool = True, target_prediction_turns: int = 0) -> dict:
    """The fidelity metrics of one simulator on some dialogues (see the module docstring).
    `target_prediction_turns`: beam-search target prediction on the first N eligible turns only (0: all; it is
    the slowest metric by far: k beams per turn)."""
    start = time.time()
    mode = simulator.mode
    items, openings = fidelity_items(dialogues, catalog, mode, simulator.tasks)
    out: dict = {"mode": mode}

    labelled = [it for it in items if it.accepted is not None]
    feedback = simulator.respond_batch([it.history for it in labelled], [it.recommended for it in labelled],
                                       [it.targets for it in labelled] if mode == TARGET_AWARE else None)
    correct = sum(f.accepted == it.accepted for f, it in zip(feedback, labelled))
    negatives = [f for f, it in zip(feedback, labelled) if not it.accepted]
    out["acceptance_accuracy"] = correct / max(1, len(labelled))
    out["false_accept_rate"] = sum(f.accepted for f in negatives) / max(1, len(negatives))
    out["parsed_rate"] = sum(f.parsed for f in feedback) / max(1, len(feedback))
    out["n_acceptance"], out["n_rejections"] = len(labelled), len(negatives)

    stated = true = 0
    if mode == LABEL_FREE:
        scored = [it for it in items if it.new_target and all_item_attributes(it.new_target, catalog)
                  and len(it.history) > 1]
        predictions = simulator.predict_attributes([it.history[:-1] for it in scored])
        for it, attributes in zip(scored, predictions):
            truth = all_item_attributes(it.new_target, catalog)
            stated += len(attributes)
            true += sum(a in truth for a in attributes)
        if with_target_prediction:
            ranked_items = [it for it in items if it.new_target and len(it.history) > 1]
            ranked_items = ranked_items[:target_prediction_turns or None]
            ranked = simulator.predict_targets([it.history[:-1] for it in ranked_items], k=recall_k)
            out["target_recall@1"] = sum(r[:1] == [it.new_target] for r, it in zip(ranked, ranked_items)) / \
                max(1, len(ranked_items))
            out[f"target_recall@{recall_k}"] = sum(it.new_target in r[:recall_k]
                                                   for r, it in zip(ranked, ranked_items)) / max(1, len(ranked_items))
            out["n_target_prediction"] = len(ranked_items)
    else:
        for f, it in zip(feedback, labelled):
            if f.accepted:
                truth = set().union(*(all_item_attributes(t, catalog) for t in it.targets))
                stated += len(f.liked_attributes)
                true += sum(a in truth for a in f.liked_attributes)
        opening_texts = simulator.start_batch([t for t, _ in openings])
        leaks = sum(names_unrecommended_target(text, t, [], catalog, names)
                    for text, (t, names) in zip(opening_texts, openings))
        exposed = [(f, it) for f, it in zip(feedback, labelled) if not it.accepted]
        leaks += sum(names_unrecommended_target(f.text, it.targets, it.named_so_far, catalog, it.names)
                     for f, it in exposed)
        out["title_leak_rate"] = leaks / max(1, len(opening_texts) + len(exposed))
        out["n_leak_checks"] = len(opening_texts) + len(exposed)
    out["attribute_precision"] = true / stated if stated else 0.0
    out["attributes_stated"] = stated

    with_reply = [it for it in items if it.reply and (mode == LABEL_FREE or it.targets)]
    prompts = [feedback_prompt(it.history, it.recommended, catalog, mode,
                               it.targets if mode == TARGET_AWARE else None, it.names, simulator.tasks)
               for it in with_reply]
    nll, tokens = reply_nll(simulator.model, simulator.tokenizer, prompts, [it.reply for it in with_reply])
    out["reply_perplexity"] = math.exp(nll / tokens) if tokens else float("nan")
    out["n_replies"] = len(with_reply)
    out["seconds"] = time.time() - start
    return out


COLUMNS = [("acceptance_accuracy", "Accept acc ↑"), ("false_accept_rate", "False accept ↓"),
           ("attribute_precision", "Attr precision ↑"), ("target_recall@1", "Target R@1 ↑"),
           ("target_recall@10", "Target R@10 ↑"), ("title_leak_rate", "Title leak ↓"),
           ("reply_perplexity", "Reply PPL ↓"), ("parsed_rate", "Tail parsed")]


def fidelity_table(rows: dict[str, dict], caption: str = "") -> str:
    """Markdown table, one row per simulator (name -> metrics); columns that no row has are left out."""
    columns = [(key, label) for key, label in COLUMNS if any(key in r for r in rows.values())]
    lines = ([caption, ""] if caption else []) + [
        "| Simulator | " + " | ".join(label for _, label in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, r in rows.items():
        cells = []
        for key, _ in columns:
            value = r.get(key)
            cells.append("–" if value is None else f"{value:.1f}" if key == "reply_perplexity" else f"{value:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def retriever_reference(retriever, dialogues, catalog, k: int = 10, method: str = "fused",
                        config: TaskConfig | None = None, target_prediction_turns: int = 0) -> dict:
    """The label-free simulator's reference point: the retriever on the same turns. Target Recall@1/@k of its
    ranking from the history, and the attribute precision of its top-1 item's attributes (stated as the
    simulator states them) against the true target. `retriever` is a fitted `DualViewRetriever` (or anything
    with its `topk(contexts, k, method)`)."""
    from .tasks import dialogue_episodes, item_attributes

    queries, targets = [], []
    for dialogue in dialogues:
        for e in dialogue_episodes(dialogue, catalog, config):
            if e.new_ids and e.history:
                queries.append({"context": e.history, "context_item_ids": e.mentioned_ids})
                targets.append(e.new_ids[0])
    if not queries:
        return {"mode": LABEL_FREE}
    ranked, _ = retriever.topk(queries, k=k, method=method)
    stated = true = 0
    for row, target in zip(ranked, targets):  # attribute precision over all turns, recall over the first N
        truth = all_item_attributes(target, catalog)
        if not truth or not row:
            continue
        attributes = item_attributes(row[0], catalog, config)
        stated += len(attributes)
        true += sum(a in truth for a in attributes)
    ranked, targets = ranked[:target_prediction_turns or None], targets[:target_prediction_turns or None]
    return {"mode": LABEL_FREE, "target_recall@1": sum(r[:1] == [t] for r, t in zip(ranked, targets)) / len(targets),
            f"target_recall@{k}": sum(t in r[:k] for r, t in zip(ranked, targets)) / len(targets),
            "attribute_precision": true / stated if stated else 0.0, "n_target_prediction": len(targets)}
