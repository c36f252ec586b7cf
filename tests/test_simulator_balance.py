"""Balancing the simulators' acceptance data (exact examples on handmade dialogues): label-free rejections
oversampled, target-aware counterfactual rejections with the target swapped, and the format-explaining prompts."""

from __future__ import annotations

import json

import pytest

from _data_fixtures import DIALOGUE, redial_messages, write_data_dir
from smtpo_fast.data.catalog import load_catalog
from smtpo_fast.data.redial import read_redial
from smtpo_fast.simulator import LABEL_FREE, TARGET_AWARE, dialogue_episodes
from smtpo_fast.simulator.tasks import (LABEL_FREE_SYSTEM, TaskConfig, build_examples, counterfactual_rejections,
                                        dialogue_examples, oversample_rejections, rejection_replies)

GHOSTBUSTERS = "Ghostbusters (1984): directed by Ivan Reitman; starring Bill Murray, Dan Aykroyd"
BRIDESMAIDS = "Bridesmaids (2011): comedy, romance; directed by Paul feig; starring Kristen wiig, Maya rudolph"
FEEDBACK_FORMAT = (" The feedback line is: [feedback] accept: yes or no; likes: genre:…, director:…, era:… (or none); "
                   "dislikes: … (or none)")

# A second dialogue: the recommender suggests Police Academy (rejected: liked 0), then Bridesmaids (accepted, the
# target).
REJECTING = {
    "movieMentions": {"111": "Police Academy  (1984)", "222": "Bridesmaids  (2011)"},
    "respondentQuestions": {"111": {"suggested": 1, "seen": 1, "liked": 0},
                            "222": {"suggested": 1, "seen": 0, "liked": 1}},
    "initiatorQuestions": {"111": {"suggested": 1, "seen": 1, "liked": 0},
                           "222": {"suggested": 1, "seen": 0, "liked": 1}},
    "messages": redial_messages(("R", "Hi!"), ("S", "I like comedies"), ("R", "Try @111"),
                                ("S", "not a fan of that one"), ("R", "Then @222?"), ("S", "sounds great")),
    "conversationId": "43", "respondentWorkerId": 20, "initiatorWorkerId": 10,
}
REJECTING_HISTORY = ("Conversation so far:\nRecommender: Hi!\nSeeker: I like comedies\n"
                     "Recommender: Try Police Academy (1984)\nSeeker: not a fan of that one\n"
                     "Recommender: Then Bridesmaids (2011)?")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_data_dir(tmp_path_factory.mktemp("data"), dialogues=(DIALOGUE, REJECTING))
    path = root / "redial" / "test_public.jsonl"
    return {"root": root, "path": path, "catalog": load_catalog(root), "dialogues": list(read_redial(path))}


def _chat(example):
    return [(m["role"], m["content"]) for m in example["messages"]]


def test_rejection_turn_is_labelled_from_the_data(data):
    episodes = dialogue_episodes(data["dialogues"][1], data["catalog"])
    assert [(e.recommended_ids, e.accepted, e.reply) for e in episodes] == [
        (["111"], False, "not a fan of that one"), (["222"], True, "sounds great")]
    assert episodes[0].dialogue_targets == ["222"]


def test_prompts_explain_the_formats_when_asked(data):
    config = TaskConfig(explain_format=True)
    examples = dialogue_examples(data["dialogues"][1], data["catalog"], LABEL_FREE, config)
    assert [e["task"] for e in examples] == ["feedback", "attributes", "target"] * 2
    assert _chat(examples[0])[1][1].endswith("\n\nReply as the seeker, then add your feedback line." + FEEDBACK_FORMAT)
    assert _chat(examples[4])[:2] == [
        ("system", LABEL_FREE_SYSTEM),
        ("user", "Conversation so far:\nRecommender: Hi!\nSeeker: I like comedies\nRecommender: Try Police Academy "
                 "(1984)\nSeeker: not a fan of that one\n\nWhat kind of movie is the seeker looking for? State its "
                 "attributes. Answer in one line: genre: …; director: …; star: …; era: 1990s")]
    assert _chat(examples[5])[1][1].endswith("Which movie is the seeker looking for? Name it. Answer with its title "
                                             "and year only.")
    # Off by default: the prompts are the ones the tiny simulators were trained on.
    plain = dialogue_examples(data["dialogues"][1], data["catalog"], LABEL_FREE)
    assert _chat(plain[0])[1][1].endswith("\n\nReply as the seeker, then add your feedback line.")


def test_rejection_replies_are_real_short_and_name_no_movie(data):
    episodes = [e for d in data["dialogues"] for e in dialogue_episodes(d, data["catalog"])]
    assert rejection_replies(episodes) == ["not a fan of that one"]
    named = [e for e in episodes if e.accepted is False][0]
    named.reply = "I hated Police Academy"  # names the rejected movie: not a reply for another list
    assert rejection_replies(episodes) == []
    named.reply = "too old, I want something after 2010"  # mentions a year
    assert rejection_replies(episodes) == []


def test_counterfactual_swaps_the_target_exactly(data):
    config = TaskConfig(swap_target_rate=1.0)
    episodes = [e for d in data["dialogues"] for e in dialogue_episodes(d, data["catalog"])]
    examples = counterfactual_rejections(episodes, data["catalog"], config)
    # DIALOGUE's target turn has no substitute left (its only other data target, Bridesmaids, was mentioned);
    # REJECTING's Bridesmaids turn gets Ghostbusters as the hoped-for movie and the data's rejection reply.
    assert len(examples) == 1
    assert _chat(examples[0]) == [
        ("system", f"You are a movie seeker talking to a recommender. You are hoping to find this movie: "
                   f"{GHOSTBUSTERS}. Never say its title yourself; accept a recommendation only if it is this movie."),
        ("user", f"{REJECTING_HISTORY}\n\nRecommended:\n- {BRIDESMAIDS}\n\nReply as the seeker, then add your "
                 "feedback line."),
        ("assistant", "not a fan of that one\n[feedback] accept: no; likes: none; dislikes: none")]
    assert examples[0]["accepted"] is False and examples[0]["counterfactual"] is True
    assert counterfactual_rejections(episodes, data["catalog"], TaskConfig(swap_target_rate=0.0)) == []
    # The real turn stays, accepted: the pair differs only in the target.
    real = dialogue_examples(data["dialogues"][1], data["catalog"], TARGET_AWARE)
    assert _chat(real[-1])[1] == _chat(examples[0])[1]
    assert _chat(real[-1])[2][1].startswith("sounds great\n[feedback] accept: yes;")


def test_build_examples_balances_each_simulator(data):
    plain = build_examples(data["path"], data["catalog"], TARGET_AWARE)
    swapped = build_examples(data["path"], data["catalog"], TARGET_AWARE, TaskConfig(swap_target_rate=1.0))
    assert swapped[:len(plain)] == plain and len(swapped) == len(plain) + 1
    assert swapped[-1]["counterfactual"]
    label_free = build_examples(data["path"], data["catalog"], LABEL_FREE)
    feedback = [e["accepted"] for e in label_free if e["task"] == "feedback"]
    assert feedback == [True, False, True]
    balanced = build_examples(data["path"], data["catalog"], LABEL_FREE, TaskConfig(reject_share=0.5))
    assert balanced[:len(label_free)] == label_free
    assert [(e["accepted"], e["oversampled"]) for e in balanced[len(label_free):]] == [(False, True)]


def test_oversample_rejections_counts_and_order():
    examples = ([{"task": "feedback", "accepted": True, "i": i} for i in range(8)]
                + [{"task": "feedback", "accepted": False, "i": i} for i in (8, 9)]
                + [{"task": "attributes", "i": i} for i in (10, 11, 12)])
    out = oversample_rejections(examples, 0.5, seed=0)
    assert out[:13] == examples
    extra = out[13:]
    assert len(extra) == 6  # (2 + 6) / (10 + 6) = 0.5
    assert all(e["accepted"] is False and e["oversampled"] for e in extra)
    assert sorted(e["i"] for e in extra) == [8, 8, 8, 9, 9, 9]  # cycles through the rejections
    assert [e["i"] for e in extra] == [e["i"] for e in oversample_rejections(examples, 0.5, seed=0)[13:]]
    assert oversample_rejections(examples, 0.1) == examples  # already 20% rejections
    assert oversample_rejections(examples, 0.0) == examples
    with pytest.raises(ValueError, match="share"):
        oversample_rejections(examples, 1.0)
    assert json.dumps(out)  # plain data: the trainer and the tests can serialise it
