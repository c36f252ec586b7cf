"""Fidelity metrics computed on the handmade dialogue with scripted generations (so every number is known), and
the `smtpo train simulator` / `smtpo eval simulator` commands end to end on the handmade data folder."""

from __future__ import annotations

import json
import math

import pytest

from _data_fixtures import write_data_dir
from _tiny_model import single_thread, tiny_model_folder
from smtpo_fast.data.catalog import load_catalog
from smtpo_fast.data.redial import read_redial
from smtpo_fast.models import load_model
from smtpo_fast.simulator import LABEL_FREE, TARGET_AWARE, UserSimulator
from smtpo_fast.simulator.fidelity import evaluate_fidelity, fidelity_table, reply_nll
from smtpo_fast.simulator.tasks import ATTRIBUTES_INSTRUCTION, OPENING_INSTRUCTION, TARGET_INSTRUCTION

_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


class ScriptedSimulator(UserSimulator):
    """Replies chosen from the prompt, so the metrics are known exactly."""

    def generate(self, prompts, max_new_tokens=None, num_return_sequences=1, num_beams=1, allowed_next=None):
        out = []
        for prompt in prompts:
            user = prompt[-1]["content"]
            if user.endswith(ATTRIBUTES_INSTRUCTION):
                replies = ["director: ivan reitman; genre: horror"]
            elif user.endswith(TARGET_INSTRUCTION):
                replies = ["Ghostbusters (1984)", "Not A Movie", "How to Train Your Dragon (2010)"]
            elif user == OPENING_INSTRUCTION:
                replies = ["I want something like Ghostbusters"]  # names the target: a leak
            elif "- Ghostbusters (1984)" in user:
                replies = ["yes!\n[feedback] accept: yes; likes: director:ivan reitman, genre:horror; dislikes: none"]
            else:
                replies = ["Ghostbusters was better\n[feedback] accept: yes; likes: none; dislikes: none"]
            out.append(replies[:num_return_sequences])
        return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_data_dir(tmp_path_factory.mktemp("data"))
    catalog = load_catalog(root)
    dialogues = list(read_redial(root / "redial" / "test_public.jsonl"))
    model, tok = load_model(tiny_model_folder(tmp_path_factory.mktemp("tiny")))
    return {"root": root, "catalog": catalog, "dialogues": dialogues, "model": model, "tok": tok}


def test_label_free_metrics(setup):
    sim = ScriptedSimulator(setup["model"], setup["tok"], setup["catalog"], mode=LABEL_FREE)
    m = evaluate_fidelity(sim, setup["dialogues"], setup["catalog"])
    # Turn 2 (Ghostbusters, liked) is the only labelled turn; the script accepts it.
    assert (m["acceptance_accuracy"], m["false_accept_rate"], m["n_acceptance"], m["n_rejections"]) == (1.0, 0, 1, 0)
    # 'director:ivan reitman' is true of Ghostbusters (turn 2) only; 'genre:horror' of neither target.
    assert m["attributes_stated"] == 4 and m["attribute_precision"] == 0.25
    # Ranked [Ghostbusters, (unresolvable), Dragon]: turn 2 hit at 1, turn 4 (Dragon) at 2.
    assert (m["target_recall@1"], m["target_recall@10"], m["n_target_prediction"]) == (0.5, 1.0, 2)
    first = evaluate_fidelity(sim, setup["dialogues"], setup["catalog"], target_prediction_turns=1)
    assert (first["target_recall@1"], first["n_target_prediction"]) == (1.0, 1)
    assert m["n_replies"] == 2 and 1 < m["reply_perplexity"] < 10 * len(setup["tok"])


def test_target_aware_metrics(setup):
    sim = ScriptedSimulator(setup["model"], setup["tok"], setup["catalog"], mode=TARGET_AWARE)
    m = evaluate_fidelity(sim, setup["dialogues"], setup["catalog"])
    # Turn 2 holds the target (accept, right); turn 4 does not (accept, wrong: a false accept).
    assert (m["acceptance_accuracy"], m["false_accept_rate"]) == (0.5, 1.0)
    # The opening names the unrecommended target (leak); turn 4's reply names it after it was recommended (no leak).
    assert (m["title_leak_rate"], m["n_leak_checks"]) == (0.5, 2)
    assert m["attributes_stated"] == 2 and m["attribute_precision"] == 0.5
    table = fidelity_table({"scripted": m})
    assert table.splitlines()[0] == ("| Simulator | Accept acc ↑ | False accept ↓ | Attr precision ↑ | Title leak ↓ | "
                                     "Reply PPL ↓ | Tail parsed |")
    assert table.splitlines()[2].startswith("| scripted | 0.500 | 1.000 | 0.500 | 0.500 | ")
    assert table.splitlines()[2].endswith(" | 1.000 |")


def test_reply_nll_scores_only_the_reply_tokens(setup):
    model, tok = setup["model"], setup["tok"]
    prompt = [{"role": "user", "content": "Have you seen Ghostbusters (1984)?"}]
    nll, n = reply_nll(model, tok, [prompt], ["yes, loved it"])
    assert n == len(tok("yes, loved it", add_special_tokens=False)["input_ids"])
    assert math.isfinite(nll) and nll > 0


TINY_SHAPE = ("tiny: {vocab_size: 400, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, "
              "intermediate_size: 64}\n")


def _train_command(setup, tmp_path, monkeypatch, recipe: str) -> list[str]:
    """`smtpo train simulator` arguments on the handmade data with `recipe` (plus a 1-layer tiny shape), caches
    under tmp_path."""
    monkeypatch.setenv("SMTPO_CACHE_DIR", str(tmp_path / "cache"))
    config = tmp_path / "recipe.yaml"
    config.write_text(recipe + TINY_SHAPE)
    return ["train", "simulator", "--data-dir", str(setup["root"]), "--train",
            str(setup["root"] / "redial" / "test_public.jsonl"), "--config", str(config), "--no-progress"]


def test_train_and_eval_commands(setup, tmp_path, monkeypatch):
    from smtpo_fast.cli import main

    train = _train_command(setup, tmp_path, monkeypatch,
                           "sft: {batch_size: 2, lr: 0.003, warmup_steps: 1, max_length: 256}\nlabel_free: {max_steps: 3}\n"
                           "target_aware: {max_steps: 2}\ntasks: {history_utterances: 3}\n")
    out = tmp_path / "sims"
    assert main(train + ["--out", str(out), "--lr", "0.004"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["simulators"]["label_free"]["steps"] == 3 and summary["simulators"]["target_aware"]["steps"] == 2
    assert summary["simulators"]["label_free"]["config"]["lr"] == 0.004  # the flag beats the YAML
    assert summary["simulators"]["label_free"]["config"]["batch_size"] == 2  # the YAML beats the default
    assert (out / "label_free" / "final" / "config.json").exists()
    loaded = UserSimulator.load(out / "target_aware" / "final", setup["catalog"])
    assert loaded.mode == TARGET_AWARE and loaded.tasks.history_utterances == 3  # from the recipe
    assert isinstance(loaded.start(["555"]), str)
    table = tmp_path / "table.md"
    assert main(["eval", "simulator", "--data-dir", str(setup["root"]), "--sims", str(out), "--max-new-tokens", "8",
                 "--table-out", str(table), "--results-json", str(tmp_path / "r.json")]) == 0
    text = table.read_text()
    for row in ("tiny prompted (no SFT) [label-free]", "label-free SFT [label-free]",
                "tiny prompted (no SFT) [target-aware]", "target-aware SFT [target-aware]"):
        assert f"| {row} |" in text
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results["test_public.jsonl"]["rows"]) == {
        "tiny prompted (no SFT) [label-free]", "tiny prompted (no SFT) [target-aware]",
        "label-free SFT [label-free]", "target-aware SFT [target-aware]"}
    with pytest.raises(ValueError, match="unknown SFTConfig field"):
        (tmp_path / "recipe.yaml").write_text("sft: {learning_rate: 1}\n")
        main(train + ["--out", str(out)])


def test_second_stage_from_an_adapter_on_chosen_tasks(setup, tmp_path, monkeypatch):
    """`--init-adapter` continues a saved LoRA simulator; `--tasks` keeps only the named tasks' examples."""
    from safetensors.torch import load_file

    from smtpo_fast.cli import main
    from smtpo_fast.simulator.tasks import build_examples

    common = _train_command(setup, tmp_path, monkeypatch, "sft: {batch_size: 2, lr: 0.01, warmup_steps: 1, "
                            "max_length: 256, max_steps: 2}\n") + ["--modes", "label_free"]
    first, second = tmp_path / "stage1", tmp_path / "stage2"
    assert main(common + ["--out", str(first), "--lora-r", "4"]) == 0
    assert main(common + ["--out", str(second), "--init-adapter", str(first / "{mode}" / "final"),
                          "--tasks", "target"]) == 0
    targets = [e for e in build_examples([setup["root"] / "redial" / "test_public.jsonl"], setup["catalog"],
                                         LABEL_FREE) if e["task"] == "target"]
    summary = json.loads((second / "summary.json").read_text())
    assert summary["simulators"]["label_free"]["examples"] == len(targets) > 0
    assert summary["init_adapter"].endswith("{mode}/final") and summary["task_filter"] == "target"
    before = load_file(first / "label_free" / "final" / "adapter_model.safetensors")
    after = load_file(second / "label_free" / "final" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not (before[k] == after[k]).all() for k in before)
    with pytest.raises(SystemExit, match="--tasks"):
        main(common + ["--out", str(tmp_path / "bad"), "--tasks", "targets"])
    with pytest.raises(SystemExit, match="--init-adapter"):
        main(common + ["--out", str(tmp_path / "bad"), "--init-adapter", str(tmp_path)])


def test_retriever_reference_uses_the_same_turns(setup):
    from smtpo_fast.simulator.fidelity import retriever_reference

    class FixedRetriever:
        def __init__(self):
            self.queries = []

        def topk(self, contexts, k=10, method="fused"):
            self.queries += contexts
            return [["555", "444"] for _ in contexts], None

    retriever = FixedRetriever()
    m = retriever_reference(retriever, setup["dialogues"], setup["catalog"])
    # Turn 2 (target 555): hit at 1; turn 4 (target 444): hit at 2.
    assert (m["target_recall@1"], m["target_recall@10"], m["n_target_prediction"]) == (0.5, 1.0, 2)
    assert retriever.queries[1]["context_item_ids"] == ["222", "555"]
    # Top-1 is Ghostbusters both times: its 4 stated attributes are all true of 555 and none of the Dragon.
    assert m["attribute_precision"] == 0.5
    # Recall on the first turn only (as `--target-prediction-turns 1` asks of the simulators); precision on all.
    first = retriever_reference(FixedRetriever(), setup["dialogues"], setup["catalog"], target_prediction_turns=1)
    assert (first["target_recall@1"], first["target_recall@10"], first["n_target_prediction"]) == (1.0, 1.0, 1)
    assert first["attribute_precision"] == 0.5


def test_tiny_preset_has_a_packaged_recipe_that_fits_ten_minutes():
    """`smtpo train simulator --preset tiny` (no --config) trains with the packaged recipe, whose training
    budgets leave room for the data, tokenizer and saving within the issue's 10 minutes."""
    from smtpo_fast.simulator.cli import DEFAULT_RECIPES, _recipe

    assert DEFAULT_RECIPES["tiny"].exists()
    recipe = _recipe(None, "tiny")
    assert set(recipe) >= {"sft", "label_free", "target_aware", "tasks", "tiny"}
    assert 0 < recipe["label_free"]["max_minutes"] + recipe["target_aware"]["max_minutes"] <= 9
    assert _recipe(None, "smollm2-135m") == {}
    assert _recipe(str(DEFAULT_RECIPES["tiny"]), "smollm2-135m") == recipe


def test_base_rows_are_prompted_with_the_recipe(tmp_path):
    """The prompted base model gets the training recipe's prompt settings: --config first, then the summary that
    `smtpo train simulator` wrote, else the defaults (reported as such)."""
    from smtpo_fast.simulator.cli import base_prompt_settings
    from smtpo_fast.simulator.tasks import TaskConfig

    sims = tmp_path / "sims"
    sims.mkdir()
    assert base_prompt_settings(None, sims) == (TaskConfig(), None)
    (sims / "summary.json").write_text(json.dumps({"tasks": {"history_utterances": 2, "explain_format": True}}))
    tasks, source = base_prompt_settings(None, sims)
    assert (tasks.history_utterances, tasks.explain_format, source) == (2, True, str(sims / "summary.json"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("tasks: {history_utterances: 5}\n")
    tasks, source = base_prompt_settings(str(recipe), sims)
    assert (tasks.history_utterances, tasks.explain_format, source) == (5, False, str(recipe))
    recipe.write_text("tasks: {history_turns: 5}\n")
    with pytest.raises(ValueError, match="unknown TaskConfig field"):
        base_prompt_settings(str(recipe), sims)
