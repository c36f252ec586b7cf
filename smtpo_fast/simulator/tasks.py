"""Multi-task SFT data for the two user simulators, built from the data layer's recommendation turns.

An *episode* is one recommendation turn with what the tasks need: the history before it, the recommender's
utterance and items, the seeker's real next utterance, and the data's acceptance label (ReDial: the seeker's
`liked` answer for the suggested movies; INSPIRED: `coarse_label` for the dialogue's final recommendation).

Tasks (each a chat example whose last message is the target):
- `feedback` (both simulators): the seeker's next utterance plus the structured tail (`feedback.format_tail`);
- `attributes` (label-free): from the history alone, the attributes of the movie the recommender will name;
- `target` (label-free): from the history alone, that movie's title;
- `opening` (target-aware): the seeker's first utterance, given only the target.

The label-free prompts never contain the target. The target-aware prompt describes the target, title included so
acceptance can follow it, but no training reply names a target before the recommender has (`names_unrecommended_
target` filters them), so the simulator never learns to say the title first."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..data.catalog import Catalog, normalise_title, split_title_year
from ..data.dialogue import RECOMMENDER, SEEKER, Dialogue
from ..data.turns import TurnConfig, dialogue_turns, merge_utterances, resolve_item
from .feedback import format_tail

LABEL_FREE = "label_free"
TARGET_AWARE = "target_aware"

LABEL_FREE_SYSTEM = ("You are a movie seeker talking to a recommender. You only know your own taste, as the "
                     "conversation shows it.")
TARGET_AWARE_SYSTEM = ("You are a movie seeker talking to a recommender. You are hoping to find this movie: {target}. "
                       "Never say its title yourself; accept a recommendation only if it is this movie.")
FEEDBACK_INSTRUCTION = "Reply as the seeker, then add your feedback line."
ATTRIBUTES_INSTRUCTION = "What kind of movie is the seeker looking for? State its attributes."
TARGET_INSTRUCTION = "Which movie is the seeker looking for? Name it."
OPENING_INSTRUCTION = "Start the conversation as the seeker."
FORMATS = {
    FEEDBACK_INSTRUCTION: " The feedback line is: [feedback] accept: yes or no; likes: genre:…, director:…, era:… "
                          "(or none); dislikes: … (or none)",
    ATTRIBUTES_INSTRUCTION: " Answer in one line: genre: …; director: …; star: …; era: 1990s",
    TARGET_INSTRUCTION: " Answer with its title and year only.",
}
SPEAKER = {SEEKER: "Seeker", RECOMMENDER: "Recommender"}


@dataclass
class TaskConfig:
    """How much of a dialogue and of an item's metadata a prompt shows."""

    history_utterances: int = 6
    """The most recent utterances shown (older ones are dropped: prompts stay short for small models)."""
    utterance_chars: int = 240
    """Each utterance is cut to this many characters."""
    max_genres: int = 3
    """Genres per item in prompts and attribute targets."""
    max_people: int = 2
    """Directors and stars (each) per item in prompts and attribute targets."""
    tail_attributes: int = 4
    """Most liked (and disliked) attributes in a feedback tail."""
    explain_format: bool = False
    """Instructions spell out each answer's format (the feedback line, the attribute line, a title), so that a
    prompted base model can answer in it too; the SFT simulators are trained on the same prompts."""
    reject_share: float = 0.0
    """Label-free: oversample the feedback examples the data labels as rejections (ReDial `liked` 0; about 5% of
    labelled turns) until they are this share of the feedback examples (0: as in the data)."""
    swap_target_rate: float = 0.0
    """Target-aware: this share of the turns whose list holds the target also yield a counterfactual rejection:
    the same dialogue and list, the target swapped for another movie of the data, a real seeker rejection reply
    from the data, `accept: no`. Paired with the real turn it teaches that acceptance follows the target."""
    seed: int = 0
    """Seed of the oversampling and of the counterfactual draws."""


@dataclass
class Episode:
    """One recommendation turn, as the simulator tasks see it."""

    dialogue_id: str
    source: str
    history: list[dict]
    """Utterances before the recommendation: [{"role": "seeker"|"recommender", "text": str}]."""
    recommendation: str
    """The recommender's utterance that names the items."""
    recommended_ids: list[str]
    """Catalog ids of the items it names (all of them, in order)."""
    new_ids: list[str]
    """The ones named for the first time in the dialogue (the targets of attribute and target prediction)."""
    reply: str
    """The seeker's next utterance ('' when the dialogue ends)."""
    accepted: bool | None
    """The data's acceptance label, None when the data does not say."""
    liked_attributes: list[str] = field(default_factory=list)
    disliked_attributes: list[str] = field(default_factory=list)
    mentioned_ids: list[str] = field(default_factory=list)
    """Items named (by either side) before this turn."""
    dialogue_targets: list[str] = field(default_factory=list)
    """Items the recommender suggested that the seeker accepted anywhere in the dialogue (the target-aware
    simulator's targets)."""
    names: dict[str, str] = field(default_factory=dict)
    """Display names of every item id above."""


def era(year: str | None) -> str | None:
    return f"{year[:3]}0s" if year and year[:4].isdigit() else None


def item_attributes(item_id: str, catalog: Catalog | None, config: TaskConfig | None = None) -> list[str]:
    """Typed attributes of an item as the simulators state them: 'genre:…', 'director:…', 'star:…', 'era:1980s'
    (lower case; at most max_genres genres and max_people directors and stars)."""
    config = config or TaskConfig()
    if catalog is None or item_id not in catalog:
        return []
    item = catalog[item_id]
    out = [f"genre:{' '.join(g.lower().split())}" for g in item.genres[:config.max_genres]]
    out += [f"director:{' '.join(p.lower().split())}" for p in item.directors[:config.max_people]]
    out += [f"star:{' '.join(p.lower().split())}" for p in item.stars[:config.max_people]]
    decade = era(item.year)
    return out + ([f"era:{decade}"] if decade else [])


def all_item_attributes(item_id: str, catalog: Catalog | None) -> set[str]:
    """Every attribute the catalog knows for an item (what 'the target really has' means in the metrics)."""
    if catalog is None or item_id not in catalog:
        return set()
    item = catalog[item_id]
    decade = era(item.year)
    return set(item.attributes()) | ({f"era:{decade}"} if decade else set())


def format_attribute_line(attributes: list[str]) -> str:
    """['genre:comedy', 'genre:crime', 'era:1980s'] -> 'genre: comedy, crime; era: 1980s' (kinds in order of
    first appearance)."""
    groups: dict[str, list[str]] = {}
    for attribute in attributes:
        kind, value = attribute.split(":", 1)
        if value not in groups.setdefault(kind, []):
            groups[kind].append(value)
    return "; ".join(f"{kind}: {', '.join(values)}" for kind, values in groups.items()) or "unknown"


def parse_attribute_line(text: str) -> list[str]:
    """Inverse of `format_attribute_line`, tolerant of spacing, case and junk parts."""
    out = []
    for part in text.replace("\n", ";").split(";"):
        if ":" not in part:
            continue
        kind, values = part.split(":", 1)
        kind = " ".join(kind.lower().split())
        if not kind or " " in kind:
            continue
        for value in values.split(","):
            value = " ".join(value.lower().split())
            if value and value != "unknown" and f"{kind}:{value}" not in out:
                out.append(f"{kind}:{value}")
    return out


def display_name(item_id: str, catalog: Catalog | None, names: dict[str, str] | None = None) -> str:
    if catalog is not None and item_id in catalog:
        item = catalog[item_id]
        return f"{item.title} ({item.year})" if item.year else item.title
    return (names or {}).get(item_id, item_id.removeprefix("title:"))


def describe_item(item_id: str, catalog: Catalog | None, names: dict[str, str] | None = None,
                  config: TaskConfig | None = None) -> str:
    """'Ghostbusters (1984): comedy, fantasy; directed by Ivan Reitman; starring Bill Murray' (metadata when the
    catalog has it)."""
    config = config or TaskConfig()
    name = display_name(item_id, catalog, names)
    if catalog is None or item_id not in catalog:
        return name
    item, parts = catalog[item_id], []
    if item.genres:
        parts.append(", ".join(g.lower() for g in item.genres[:config.max_genres]))
    if item.directors:
        parts.append("directed by " + ", ".join(item.directors[:config.max_people]))
    if item.stars:
        parts.append("starring " + ", ".join(item.stars[:config.max_people]))
    return f"{name}: {'; '.join(parts)}" if parts else name


def with_format(text: str, config: TaskConfig | None = None) -> str:
    """An instruction, with its answer format spelled out when `config.explain_format`."""
    return text + FORMATS.get(text, "") if config is not None and config.explain_format else text


def render_history(utterances: list[dict], config: TaskConfig | None = None) -> str:
    config = config or TaskConfig()
    shown = utterances[-config.history_utterances:] if config.history_utterances > 0 else []
    lines = []
    for u in shown:
        text = " ".join(u["text"].split())
        if len(text) > config.utterance_chars:
            text = text[:config.utterance_chars].rstrip() + "…"
        lines.append(f"{SPEAKER.get(u['role'], u['role'])}: {text}")
    return "\n".join(lines) if lines else "(nothing yet)"


def names_unrecommended_target(text: str, targets: list[str], recommended_so_far: list[str],
                               catalog: Catalog | None, names: dict[str, str] | None = None) -> bool:
    """Whether `text` names a target title that the recommender has not named yet (the title-leak test)."""
    padded = f" {normalise_title(text)} "
    for target in targets:
        if target in recommended_so_far:
            continue
        title = normalise_title(split_title_year(display_name(target, catalog, names))[0])
        if title and f" {title} " in padded:
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Episodes
# ---------------------------------------------------------------------------------------------------------------
def _seeker_verdicts(dialogue: Dialogue, catalog: Catalog | None) -> dict[str, dict]:
    verdicts = {}
    for raw_id in set(dialogue.seeker_feedback) | set(dialogue.recommender_feedback):
        answers = dialogue.seeker_feedback.get(raw_id) or dialogue.recommender_feedback.get(raw_id)
        verdicts[resolve_item(raw_id, dialogue, catalog)] = answers
    return verdicts


def dialogue_episodes(dialogue: Dialogue, catalog: Catalog | None = None,
                      config: TaskConfig | None = None) -> list[Episode]:
    """The recommendation turns of one dialogue as `Episode`s."""
    config = config or TaskConfig()
    turns = dialogue_turns(dialogue, catalog, TurnConfig(merge_consecutive=True))
    utterances = merge_utterances(dialogue.utterances)
    verdicts = _seeker_verdicts(dialogue, catalog)
    names = {}
    for raw_id, name in dialogue.item_names.items():
        names[resolve_item(raw_id, dialogue, catalog)] = name
    inspired_label = {"accept_new": True, "reject_new": False}.get(str(dialogue.meta.get("coarse_label", "")))
    last_turn_index = turns[-1]["turn_index"] if turns else -1

    targets: list[str] = []
    if dialogue.source == "inspired":
        if inspired_label and turns:
            targets = list(turns[-1]["new_target_ids"] or turns[-1]["all_target_ids"])
    else:
        for turn in turns:
            for item_id in turn["all_target_ids"]:
                v = verdicts.get(item_id, {})
                if int(v.get("liked", 2)) == 1 and int(v.get("suggested", 1)) == 1 and item_id not in targets:
                    targets.append(item_id)

    episodes = []
    for turn in turns:
        index = turn["turn_index"]
        nxt = utterances[index + 1] if index + 1 < len(utterances) else None
        reply = nxt.text if nxt is not None and nxt.role == SEEKER else ""
        recommended = list(turn["all_target_ids"])
        if dialogue.source == "inspired":
            accepted = inspired_label if index == last_turn_index else None
            liked = [i for i in recommended if accepted] if accepted is not None else []
            disliked = [i for i in recommended if accepted is False]
        else:
            # Judge the items the recommender brought up (ReDial `suggested`), not ones the seeker named first.
            considered = [i for i in recommended if int(verdicts.get(i, {}).get("suggested", 2)) == 1] \
                or list(turn["new_target_ids"])
            answers = {i: int(verdicts.get(i, {}).get("liked", 2)) for i in considered}
            accepted = True if 1 in answers.values() else False if 0 in answers.values() else None
            liked = [i for i, a in answers.items() if a == 1]
            disliked = [i for i, a in answers.items() if a == 0]
        # The tail names what the seeker would say they like: genres, director, era (not the cast).
        short = TaskConfig(max_genres=2, max_people=1)
        liked_attrs = [a for i in liked for a in item_attributes(i, catalog, short) if not a.startswith("star:")]
        disliked_attrs = [a for i in disliked for a in item_attributes(i, catalog, short) if not a.startswith("star:")]
        episodes.append(Episode(
            dialogue_id=dialogue.dialogue_id, source=dialogue.source, history=turn["context"],
            recommendation=utterances[index].text, recommended_ids=recommended, new_ids=list(turn["new_target_ids"]),
            reply=reply, accepted=accepted,
            liked_attributes=list(dict.fromkeys(liked_attrs))[:config.tail_attributes],
            disliked_attributes=list(dict.fromkeys(disliked_attrs))[:config.tail_attributes],
            mentioned_ids=list(turn["context_item_ids"]), dialogue_targets=list(targets),
            names={i: display_name(i, catalog, names) for i in recommended + targets}))
    return episodes


def first_seeker_utterance(dialogue: Dialogue) -> str:
    return next((u.text for u in merge_utterances(dialogue.utterances) if u.role == SEEKER), "")


# ---------------------------------------------------------------------------------------------------------------
# Prompts and examples
# ---------------------------------------------------------------------------------------------------------------
def target_description(targets: list[str], catalog: Catalog | None, names: dict[str, str] | None = None,
                       config: TaskConfig | None = None) -> str:
    return " or ".join(describe_item(t, catalog, names, config) for t in targets)


def system_prompt(mode: str, targets: list[str] | None = None, catalog: Catalog | None = None,
                  names: dict[str, str] | None = None, config: TaskConfig | None = None) -> str:
    if mode == LABEL_FREE:
        return LABEL_FREE_SYSTEM
    if mode != TARGET_AWARE:
        raise ValueError(f"mode: expected {LABEL_FREE!r} or {TARGET_AWARE!r}, got {mode!r}")
    if not targets:
        raise ValueError("targets: the target-aware simulator needs at least one target item")
    return TARGET_AWARE_SYSTEM.format(target=target_description(targets, catalog, names, config))


def feedback_prompt(history: list[dict], recommended: list[str], catalog: Catalog | None, mode: str,
                    targets: list[str] | None = None, names: dict[str, str] | None = None,
                    config: TaskConfig | None = None) -> list[dict]:
    """Chat messages asking for the seeker's reply to a recommendation. `history` ends with the recommender's
    utterance that makes it; `recommended` are its items' ids (or names)."""
    listed = "\n".join(f"- {describe_item(i, catalog, names, config)}" for i in recommended) or "- (none)"
    user = (f"Conversation so far:\n{render_history(history, config)}\n\nRecommended:\n{listed}\n\n"
            f"{with_format(FEEDBACK_INSTRUCTION, config)}")
    return [{"role": "system", "content": system_prompt(mode, targets, catalog, names, config)},
            {"role": "user", "content": user}]


def history_prompt(history: list[dict], instruction: str, config: TaskConfig | None = None) -> list[dict]:
    user = f"Conversation so far:\n{render_history(history, config)}\n\n{with_format(instruction, config)}"
    return [{"role": "system", "content": LABEL_FREE_SYSTEM}, {"role": "user", "content": user}]


def opening_prompt(targets: list[str], catalog: Catalog | None, names: dict[str, str] | None = None,
                   config: TaskConfig | None = None) -> list[dict]:
    return [{"role": "system", "content": system_prompt(TARGET_AWARE, targets, catalog, names, config)},
            {"role": "user", "content": OPENING_INSTRUCTION}]


TASKS = ("feedback", "attributes", "target", "opening")
"""The `task` of an SFT example: feedback generation, attribute alignment, target prediction, the opening."""


def _with_answer(messages: list[dict], answer: str, task: str, **meta) -> dict:
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    return {"messages": messages + [{"role": "assistant", "content": answer}], "task": task, **meta}


def episode_examples(episode: Episode, catalog: Catalog | None, mode: str,
                     config: TaskConfig | None = None, tasks: tuple[str, ...] | None = None) -> list[dict]:
    """The SFT examples of one episode for one simulator. Label-free: feedback (when the data labels the turn
    and the seeker replied), attributes and target (when the new item has metadata / a name). Target-aware:
    feedback for every turn the seeker answers, in dialogues with an accepted target (accepted = the list holds a
    target), unless the reply names a target not yet recommended."""
    config = config or TaskConfig()
    tasks = tasks or (("feedback", "attributes", "target") if mode == LABEL_FREE else ("feedback",))
    dialogue_so_far = episode.history + [{"role": RECOMMENDER, "text": episode.recommendation}]
    out = []
    meta = {"dialogue_id": episode.dialogue_id, "source": episode.source}
    if "feedback" in tasks and episode.reply:
        reply = " ".join(episode.reply.split())
        if mode == LABEL_FREE and episode.accepted is not None:
            answer = f"{reply}\n{format_tail(episode.accepted, episode.liked_attributes, episode.disliked_attributes)}"
            out.append(_with_answer(feedback_prompt(dialogue_so_far, episode.recommended_ids, catalog, mode,
                                                    names=episode.names, config=config), answer, "feedback",
                                    accepted=episode.accepted, **meta))
        elif mode == TARGET_AWARE and episode.dialogue_targets and not names_unrecommended_target(
                episode.reply, episode.dialogue_targets, episode.mentioned_ids + episode.recommended_ids, catalog,
                episode.names):
            accepted = any(i in episode.dialogue_targets for i in episode.recommended_ids)
            answer = f"{reply}\n{format_tail(accepted, episode.liked_attributes, episode.disliked_attributes)}"
            out.append(_with_answer(feedback_prompt(dialogue_so_far, episode.recommended_ids, catalog, mode,
                                                    episode.dialogue_targets, episode.names, config),
                                    answer, "feedback", accepted=accepted, **meta))
    target = next((i for i in episode.new_ids), None)
    if mode == LABEL_FREE and target is not None and episode.history:
        attributes = item_attributes(target, catalog, config)
        if "attributes" in tasks and attributes:
            out.append(_with_answer(history_prompt(episode.history, ATTRIBUTES_INSTRUCTION, config),
                                    format_attribute_line(attributes), "attributes", **meta))
        if "target" in tasks:
            out.append(_with_answer(history_prompt(episode.history, TARGET_INSTRUCTION, config),
                                    display_name(target, catalog, episode.names), "target", **meta))
    return out


def dialogue_examples(dialogue: Dialogue, catalog: Catalog | None, mode: str,
                      config: TaskConfig | None = None, episodes: list[Episode] | None = None) -> list[dict]:
    """Every SFT example of one dialogue for one simulator (target-aware adds the `opening` example).
    `episodes`: the dialogue's episodes when the caller has them already."""
    episodes = dialogue_episodes(dialogue, catalog, config) if episodes is None else episodes
    out = []
    if mode == TARGET_AWARE and episodes and episodes[0].dialogue_targets:
        opening = first_seeker_utterance(dialogue)
        targets = episodes[0].dialogue_targets
        if opening and not names_unrecommended_target(opening, targets, [], catalog, episodes[0].names):
            out.append(_with_answer(opening_prompt(targets, catalog, episodes[0].names, config),
                                    " ".join(opening.split()), "opening", dialogue_id=dialogue.dialogue_id,
                                    source=dialogue.source))
    for episode in episodes:
        out += episode_examples(episode, catalog, mode, config)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Balancing acceptance: the data is ~95% (label-free) / ~80% (target-aware) acceptances, and a small model trained
# on it as is learns to accept everything.
# ---------------------------------------------------------------------------------------------------------------
_YEAR = re.compile(r"\b(18|19|20)\d\d\b")


def rejection_replies(episodes: list[Episode], max_chars: int = 120) -> list[str]:
    """Real seeker replies to recommendations the data labels as rejected (accepted False), short and naming no
    movie (no year, no `@id`, no title of the turn's items): the replies of the counterfactual rejections."""
    out: list[str] = []
    for e in episodes:
        reply = " ".join(e.reply.split())
        if (e.accepted is False and reply and len(reply) <= max_chars and not _YEAR.search(reply)
                and "@" not in reply and reply not in out
                and not names_unrecommended_target(reply, e.recommended_ids, [], None, e.names)):
            out.append(reply)
    return out


def swapped_target_example(episode: Episode, catalog: Catalog | None, config: TaskConfig, replies: list[str],
                           target_pool: list[str], rng: random.Random) -> dict | None:
    """The counterfactual of a turn whose list holds the target: the same dialogue and list, but the seeker is
    hoping for another movie (`target_pool`, none named in the dialogue so far), so the label is a rejection; the
    reply is a real rejection reply of the data (`replies`). None when the turn does not qualify or the draw
    (`config.swap_target_rate`) says no."""
    if not (episode.reply and episode.dialogue_targets and replies
            and any(i in episode.dialogue_targets for i in episode.recommended_ids)):
        return None
    if rng.random() >= config.swap_target_rate:
        return None
    taken = set(episode.mentioned_ids) | set(episode.recommended_ids) | set(episode.dialogue_targets)
    choices = [t for t in target_pool if t not in taken]
    if not choices:
        return None
    substitute, reply = rng.choice(choices), rng.choice(replies)
    names = {**episode.names, substitute: display_name(substitute, catalog)}
    if names_unrecommended_target(reply, [substitute], [], catalog, names):
        return None
    dialogue_so_far = episode.history + [{"role": RECOMMENDER, "text": episode.recommendation}]
    return _with_answer(feedback_prompt(dialogue_so_far, episode.recommended_ids, catalog, TARGET_AWARE,
                                        [substitute], names, config),
                        f"{reply}\n{format_tail(False, [], [])}", "feedback", accepted=False, counterfactual=True,
                        dialogue_id=episode.dialogue_id, source=episode.source)


def counterfactual_rejections(episodes: list[Episode], catalog: Catalog | None,
                              config: TaskConfig | None = None) -> list[dict]:
    """`swapped_target_example` over many dialogues' episodes: the replies and the substitute targets are drawn
    from these episodes (each turn's draw is seeded by (seed, dialogue, turn), so it does not depend on order)."""
    config = config or TaskConfig()
    if config.swap_target_rate <= 0:
        return []
    replies = rejection_replies(episodes)
    pool = list(dict.fromkeys(t for e in episodes for t in e.dialogue_targets
                              if catalog is None or t in catalog))
    out = []
    for e in episodes:
        rng = random.Random(f"{config.seed}:{e.dialogue_id}:{len(e.history)}")
        example = swapped_target_example(e, catalog, config, replies, pool, rng)
        if example is not None:
            out.append(example)
    return out


def oversample_rejections(examples: list[dict], share: float, seed: int = 0) -> list[dict]:
    """`examples` plus copies of its rejection feedback examples (`accepted` False), cycling through them in a
    seeded order, until rejections are at least `share` of the labelled feedback examples."""
    feedback = [e for e in examples if e.get("task") == "feedback" and e.get("accepted") is not None]
    rejects = [e for e in feedback if e["accepted"] is False]
    if share <= 0 or not rejects or len(rejects) >= share * len(feedback):
        return list(examples)
    if share >= 1:
        raise ValueError(f"share: expected a fraction below 1, got {share}")
    extra = math.ceil((share * len(feedback) - len(rejects)) / (1 - share))
    order = random.Random(seed).sample(range(len(rejects)), len(rejects))
    return list(examples) + [dict(rejects[order[i % len(rejects)]], oversampled=True) for i in range(extra)]


def build_examples(paths, catalog: Catalog | None, mode: str, config: TaskConfig | None = None,
                   max_dialogues: int | None = None) -> list[dict]:
    """SFT examples for one simulator from ReDial .jsonl / INSPIRED .tsv files, balanced as `config` says
    (label-free: `reject_share`; target-aware: `swap_target_rate`)."""
    from ..data.turns import read_dialogues

    config = config or TaskConfig()
    out, all_episodes, count = [], [], 0
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        for dialogue in read_dialogues(path, skip_bad=True):
            if max_dialogues is not None and count >= max_dialogues:
                break
            episodes = dialogue_episodes(dialogue, catalog, config)
            out += dialogue_examples(dialogue, catalog, mode, config, episodes)
            all_episodes += episodes
            count += 1
    if mode == LABEL_FREE:
        return oversample_rejections(out, config.reject_share, config.seed)
    return out + counterfactual_rejections(all_episodes, catalog, config)
