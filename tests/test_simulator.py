"""Simulator task builders on a handmade dialogue (exact prompts and targets), the feedback parser on malformed
generations, and `UserSimulator` end to end on a tiny model fine-tuned on the handmade examples."""

from __future__ import annotations

import json

import pytest

from _data_fixtures import DIALOGUE, write_data_dir
from _tiny_model import TEXTS, single_thread, tiny_model_folder
from smtpo_fast.data.catalog import load_catalog
from smtpo_fast.data.inspired import read_inspired
from smtpo_fast.data.redial import read_redial
from smtpo_fast.simulator import (LABEL_FREE, TARGET_AWARE, Feedback, UserSimulator, dialogue_episodes,
                                  dialogue_examples, format_tail, parse_feedback)
from smtpo_fast.simulator.tasks import (LABEL_FREE_SYSTEM, format_attribute_line, item_attributes,
                                        names_unrecommended_target, parse_attribute_line)

_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)

HISTORY = ("Conversation so far:\nRecommender: Hi, what do you like?\n"
           "Seeker: I loved Bridesmaids (2011) comedies mostly")
GHOSTBUSTERS = "Ghostbusters (1984): directed by Ivan Reitman; starring Bill Murray, Dan Aykroyd"
TARGET_AWARE_SYSTEM_555 = (f"You are a movie seeker talking to a recommender. You are hoping to find this movie: "
                           f"{GHOSTBUSTERS}. Never say its title yourself; accept a recommendation only if it is "
                           f"this movie.")
FEEDBACK_USER_T2 = (f"{HISTORY}\nRecommender: Have you seen Ghostbusters (1984)?\n\nRecommended:\n- {GHOSTBUSTERS}"
                    "\n\nReply as the seeker, then add your feedback line.")
FEEDBACK_USER_T4 = (f"{HISTORY}\nRecommender: Have you seen Ghostbusters (1984)?\nSeeker: yes, loved it\n"
                    "Recommender: Like Bridesmaids (2011) there is How to Train Your Dragon\n\nRecommended:\n"
                    "- Bridesmaids (2011): comedy, romance; directed by Paul feig; starring Kristen wiig, Maya rudolph\n"
                    "- How to Train Your Dragon (2010): animation, adventure; directed by Dean deblois; starring Jay "
                    "baruchel\n\nReply as the seeker, then add your feedback line.")
HISTORY_T4 = (f"{HISTORY}\nRecommender: Have you seen Ghostbusters (1984)?\nSeeker: yes, loved it")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_data_dir(tmp_path_factory.mktemp("data"))
    catalog = load_catalog(root)
    dialogue = next(read_redial(root / "redial" / "test_public.jsonl"))
    return {"root": root, "catalog": catalog, "dialogue": dialogue}


def _chat(example):
    return [(m["role"], m["content"]) for m in example["messages"]]


def test_episodes_of_the_handmade_dialogue(data):
    episodes = dialogue_episodes(data["dialogue"], data["catalog"])
    assert [e.recommended_ids for e in episodes] == [["555"], ["222", "444"]]
    assert [e.new_ids for e in episodes] == [["555"], ["444"]]
    assert [e.reply for e in episodes] == ["yes, loved it", "I hated Police Academy (1984) though"]
    # 555 was suggested and liked; at turn 4 only 444 was suggested (222 is the seeker's own) and its answer is
    # 'unsaid', so the data gives no label there.
    assert [e.accepted for e in episodes] == [True, None]
    assert episodes[0].liked_attributes == ["director:ivan reitman", "era:1980s"]
    assert episodes[0].dialogue_targets == ["555"]


def test_label_free_examples_exact(data):
    examples = dialogue_examples(data["dialogue"], data["catalog"], LABEL_FREE)
    assert [e["task"] for e in examples] == ["feedback", "attributes", "target", "attributes", "target"]
    assert _chat(examples[0]) == [
        ("system", LABEL_FREE_SYSTEM), ("user", FEEDBACK_USER_T2),
        ("assistant", "yes, loved it\n[feedback] accept: yes; likes: director:ivan reitman, era:1980s; "
                      "dislikes: none")]
    attributes_user = f"{HISTORY}\n\nWhat kind of movie is the seeker looking for? State its attributes."
    assert _chat(examples[1]) == [
        ("system", LABEL_FREE_SYSTEM), ("user", attributes_user),
        ("assistant", "director: ivan reitman; star: bill murray, dan aykroyd; era: 1980s")]
    assert _chat(examples[2])[1:] == [("user", f"{HISTORY}\n\nWhich movie is the seeker looking for? Name it."),
                                      ("assistant", "Ghostbusters (1984)")]
    assert _chat(examples[3])[1:] == [
        ("user", f"{HISTORY_T4}\n\nWhat kind of movie is the seeker looking for? State its attributes."),
        ("assistant", "genre: animation, adventure; director: dean deblois; star: jay baruchel; era: 2010s")]
    assert _chat(examples[4])[2] == ("assistant", "How to Train Your Dragon (2010)")
    # Attribute and target prompts stop before the recommendation: the answer's title is not in them.
    for e, title in zip(examples[1:], ["Ghostbusters", "Ghostbusters", "Dragon", "Dragon"]):
        assert title not in e["messages"][0]["content"] + e["messages"][1]["content"]


def test_target_aware_examples_exact(data):
    examples = dialogue_examples(data["dialogue"], data["catalog"], TARGET_AWARE)
    assert [e["task"] for e in examples] == ["opening", "feedback", "feedback"]
    assert _chat(examples[0]) == [("system", TARGET_AWARE_SYSTEM_555),
                                  ("user", "Start the conversation as the seeker."),
                                  ("assistant", "I loved Bridesmaids (2011) comedies mostly")]
    assert _chat(examples[1]) == [
        ("system", TARGET_AWARE_SYSTEM_555), ("user", FEEDBACK_USER_T2),
        ("assistant", "yes, loved it\n[feedback] accept: yes; likes: director:ivan reitman, era:1980s; "
                      "dislikes: none")]
    # Turn 4 recommends other movies than the target: the target-aware simulator rejects.
    assert _chat(examples[2]) == [
        ("system", TARGET_AWARE_SYSTEM_555), ("user", FEEDBACK_USER_T4),
        ("assistant", "I hated Police Academy (1984) though\n[feedback] accept: no; likes: none; dislikes: none")]


def test_target_aware_drops_replies_that_leak_the_target(data):
    leaky = json.loads(json.dumps(DIALOGUE))
    leaky["messages"][1]["text"] = "I want @555 or something like it"  # the opening names the target
    leaky["initiatorQuestions"]["555"] = {"suggested": 1, "seen": 1, "liked": 1}
    path = data["root"] / "leaky.jsonl"
    path.write_text(json.dumps(leaky) + "\n")
    dialogue = next(read_redial(path))
    examples = dialogue_examples(dialogue, data["catalog"], TARGET_AWARE)
    assert "opening" not in [e["task"] for e in examples]
    assert names_unrecommended_target("I want ghostbusters!", ["555"], [], data["catalog"])
    assert not names_unrecommended_target("I want ghostbusters!", ["555"], ["555"], data["catalog"])
    assert not names_unrecommended_target("ghost busting fun", ["555"], [], data["catalog"])


def test_inspired_labels_from_coarse_label(data):
    dialogues = list(read_inspired(data["root"] / "inspired" / "dev.tsv"))
    episodes = dialogue_episodes(dialogues[0], data["catalog"])
    assert [e.reply for e in episodes] == ["Great, thanks"]
    assert episodes[0].accepted is True  # coarse_label accept_new on the final recommendation
    assert episodes[0].recommended_ids == ["555", "title:Unknown Film (1999)"]
    examples = dialogue_examples(dialogues[0], data["catalog"], LABEL_FREE)
    assert examples[0]["messages"][-1]["content"].startswith("Great, thanks\n[feedback] accept: yes; likes: ")
    last = dialogue_episodes(dialogues[1], data["catalog"])[-1]
    assert last.reply == "" and not [e for e in dialogue_examples(dialogues[1], data["catalog"], LABEL_FREE)
                                      if e["task"] == "feedback"]


def test_attribute_line_round_trip(data):
    attributes = item_attributes("222", data["catalog"])
    assert attributes == ["genre:comedy", "genre:romance", "director:paul feig", "star:kristen wiig",
                          "star:maya rudolph", "era:2010s"]
    line = format_attribute_line(attributes)
    assert line == "genre: comedy, romance; director: paul feig; star: kristen wiig, maya rudolph; era: 2010s"
    assert parse_attribute_line(line) == attributes
    assert parse_attribute_line("Genre:  Comedy ,, ; junk ; era: 2010s\nthe movie: x y") == \
        ["genre:comedy", "era:2010s"]
    assert parse_attribute_line("unknown") == []


@pytest.mark.parametrize("text, expected", [
    ("yes, loved it\n[feedback] accept: yes; likes: genre:comedy, era:1980s; dislikes: none",
     Feedback("yes, loved it", True, ["genre:comedy", "era:1980s"], [], True)),
    ("nah\n[FEEDBACK] Accept = No; dislikes: Genre: Horror", Feedback("nah", False, [], ["genre:horror"], True)),
    # A truncated tail: the verdict is missing, so the text decides, and the parse is flagged.
    ("Sounds great, I'll watch it\n[feedback] acc", Feedback("Sounds great, I'll watch it", True, [], [], False)),
    ("I don't like horror [feedback] accept: maybe", Feedback("I don't like horror", False, [], [], False)),
    ("", Feedback("", False, [], [], False)),
    ("no tail at all, thanks!", Feedback("no tail at all, thanks!", True, [], [], False)),
    ("not really, thanks", Feedback("not really, thanks", False, [], [], False)),
    ("[feedback] accept: yes.; likes: none; dislikes:", Feedback("", True, [], [], True)),
    ("a\n[feedback] accept: no\n[feedback] accept: yes; likes: genre:x, nonsense, :y",
     Feedback("a\n[feedback] accept: no", True, ["genre:x"], [], True)),
    ("\x00\ufffd[feedback]", Feedback("\x00\ufffd", False, [], [], False)),
])
def test_parse_feedback_on_malformed_generations(text, expected):
    assert parse_feedback(text) == expected


def test_parse_feedback_round_trips_the_tail():
    tail = format_tail(True, ["genre:comedy", "director:paul feig"], ["star:x"])
    assert parse_feedback(f"ok then\n{tail}") == Feedback("ok then", True, ["genre:comedy", "director:paul feig"],
                                                          ["star:x"], True)
    assert parse_feedback(None) == Feedback("", False, [], [], False)


def test_user_simulator_learns_the_handmade_dialogue(data, tmp_path):
    from smtpo_fast.models import load_model
    from smtpo_fast.train import SFTConfig, SFTTrainer

    catalog = data["catalog"]
    examples = dialogue_examples(data["dialogue"], catalog, TARGET_AWARE)
    texts = TEXTS + [m["content"] for e in examples for m in e["messages"]] * 5
    model, tok = load_model(tiny_model_folder(tmp_path, texts))
    cfg = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=80, batch_size=3, lr=5e-3, warmup_steps=5,
                    progress=False, device="cpu", max_length=512)
    result = SFTTrainer(model, tok, examples, cfg).train()
    assert result.losses[-1] < 0.2

    simulator = UserSimulator(model, tok, catalog, mode=TARGET_AWARE)
    history = [{"role": "recommender", "text": "Hi, what do you like?"},
               {"role": "seeker", "text": "I loved Bridesmaids (2011) comedies mostly"},
               {"role": "recommender", "text": "Have you seen Ghostbusters (1984)?"}]
    feedback = simulator.respond(history, ["555"], target_items=["555"])
    assert feedback == Feedback("yes, loved it", True, ["director:ivan reitman", "era:1980s"], [], True)
    assert simulator.start(["555"]) == "I loved Bridesmaids (2011) comedies mostly"
    with pytest.raises(ValueError, match="target_items"):
        simulator.respond(history, ["555"])
    with pytest.raises(ValueError, match="recommended_lists"):
        simulator.respond_batch([history, history], [["555"]], [["555"], ["555"]])
    with pytest.raises(ValueError, match="start"):
        UserSimulator(model, tok, catalog, mode=LABEL_FREE).start(["555"])
    with pytest.raises(ValueError, match="mode"):
        UserSimulator(model, tok, catalog, mode="oracle")


def test_target_aware_prompt_names_every_target(data):
    """Acceptance is labelled 'the list holds any of the dialogue's targets', so the prompt must show all of them
    (it once showed the first two: a third of ReDial's accepted turns then had a label the prompt could not
    explain)."""
    from smtpo_fast.simulator.tasks import feedback_prompt, system_prompt

    catalog = data["catalog"]
    system = system_prompt(TARGET_AWARE, ["555", "222", "444"], catalog, config=None)
    for title in ("Ghostbusters (1984)", "Bridesmaids (2011)", "How to Train Your Dragon (2010)"):
        assert title in system
    prompt = feedback_prompt([{"role": "recommender", "text": "Try How to Train Your Dragon"}], ["444"], catalog,
                             TARGET_AWARE, ["555", "222", "444"])
    assert prompt[0]["content"] == system
