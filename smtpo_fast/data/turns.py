"""The recommendation-turn view of dialogues: one record per recommender utterance that mentions items, with
the context before it, the target items and what the seeker said they liked. Every later stage reads this."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .catalog import Catalog
from .dialogue import RECOMMENDER, SEEKER, Dialogue, Utterance
from .errors import SkipCounter
from .paths import cache_dir as default_cache_dir
from .paths import combined_hash

TURNS_VERSION = 2  # bump when the record layout changes, so cached datasets are rebuilt


@dataclass
class TurnConfig:
    """How dialogues become recommendation turns."""

    merge_consecutive: bool = True
    """Join consecutive messages of the same speaker into one utterance (ReDial splits a turn over several
    messages; CRS work treats them as one)."""
    new_items_only: bool = False
    """`target_ids` holds only the items the utterance mentions for the first time in the dialogue (the common
    ReDial evaluation); all mentioned items are always in `all_target_ids`."""
    skip_bad: bool = False
    """Skip (and count) malformed lines instead of stopping at the first one."""


def merge_utterances(utterances: list[Utterance]) -> list[Utterance]:
    merged: list[Utterance] = []
    for utt in utterances:
        if merged and merged[-1].role == utt.role:
            last = merged[-1]
            last.text = f"{last.text} {utt.text}".strip()
            last.raw_text = f"{last.raw_text} {utt.raw_text}".strip()
            last.item_ids += [i for i in utt.item_ids if i not in last.item_ids]
            last.genres += [g for g in utt.genres if g not in last.genres]
            last.people += [p for p in utt.people if p not in last.people]
        else:
            merged.append(Utterance(role=utt.role, text=utt.text, raw_text=utt.raw_text, item_ids=list(utt.item_ids),
                                    genres=list(utt.genres), people=list(utt.people), meta=dict(utt.meta)))
    return merged


def resolve_item(item_id: str, dialogue: Dialogue, catalog: Catalog | None) -> str:
    """Catalog id for an item as the dialogue names it. ReDial ids pass through; INSPIRED titles are joined by
    normalised title, and the ones the catalog lacks become 'title:<Title (Year)>'."""
    if catalog is None or item_id in catalog:
        return item_id
    resolved = catalog.resolve(dialogue.item_names.get(item_id, item_id))
    return resolved if resolved is not None else f"title:{item_id}"


def _attributes(ids: Iterable[str], catalog: Catalog | None) -> list[str]:
    out: list[str] = []
    if catalog is None:
        return out
    for item_id in ids:
        if item_id in catalog:
            out += [a for a in catalog[item_id].attributes() if a not in out]
    return out


def dialogue_turns(dialogue: Dialogue, catalog: Catalog | None = None, config: TurnConfig | None = None) -> list[dict]:
    """The recommendation turns of one dialogue (see the module docstring and `turn_features`)."""
    config = config or TurnConfig()
    utterances = merge_utterances(dialogue.utterances) if config.merge_consecutive else dialogue.utterances
    feedback_by_id = {}
    for raw_id in set(dialogue.seeker_feedback) | set(dialogue.recommender_feedback):
        answers = dialogue.seeker_feedback.get(raw_id) or dialogue.recommender_feedback.get(raw_id)
        feedback_by_id[resolve_item(raw_id, dialogue, catalog)] = answers

    def names(ids):
        return [catalog[i].name if catalog is not None and i in catalog else
                dialogue.item_names.get(i, i.removeprefix("title:")) for i in ids]

    turns, context, mentioned = [], [], []
    for index, utt in enumerate(utterances):
        ids = []
        for raw in utt.item_ids:
            item_id = resolve_item(raw, dialogue, catalog)
            if item_id not in ids:
                ids.append(item_id)
        if utt.role == RECOMMENDER and ids:
            new_ids = [i for i in ids if i not in mentioned]
            liked = [i for i in mentioned if feedback_by_id.get(i, {}).get("liked") == 1]
            disliked = [i for i in mentioned if feedback_by_id.get(i, {}).get("liked") == 0]
            targets = new_ids if config.new_items_only else ids
            last_seeker = next((c["text"] for c in reversed(context) if c["role"] == SEEKER), "")
            turns.append({
                "dialogue_id": dialogue.dialogue_id,
                "source": dialogue.source,
                "turn_index": index,
                "context": [dict(c) for c in context],
                "feedback": last_seeker,
                "context_item_ids": list(mentioned),
                "target_ids": targets,
                "target_names": names(targets),
                "new_target_ids": new_ids,
                "all_target_ids": ids,
                "response": utt.text,
                "target_liked": [int(feedback_by_id.get(i, {}).get("liked", 2)) for i in targets],
                "target_seen": [int(feedback_by_id.get(i, {}).get("seen", 2)) for i in targets],
                "liked_ids": liked,
                "disliked_ids": disliked,
                "liked_attributes": _attributes(liked, catalog),
                "disliked_attributes": _attributes(disliked, catalog),
                "target_attributes": _attributes(targets, catalog),
                "mentioned_genres": sorted({g for c in context for g in c.get("genres", [])}),
                "mentioned_people": sorted({p for c in context for p in c.get("people", [])}),
            })
        context.append({"role": utt.role, "text": utt.text, "genres": list(utt.genres), "people": list(utt.people)})
        mentioned += [i for i in ids if i not in mentioned]
    for turn in turns:
        turn["context"] = [{"role": c["role"], "text": c["text"]} for c in turn["context"]]
    return turns


def detect_format(path: str | Path) -> str:
    """'redial' for .jsonl/.json files, 'inspired' for .tsv files."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "redial"
    if suffix in (".tsv", ".txt"):
        return "inspired"
    raise ValueError(f"{path}: cannot tell the format from the extension (expected .jsonl or .tsv)")


def read_dialogues(path: str | Path, skip_bad: bool = False, skipped: SkipCounter | None = None):
    from .inspired import read_inspired
    from .redial import read_redial

    reader = read_redial if detect_format(path) == "redial" else read_inspired
    return reader(path, skip_bad=skip_bad, skipped=skipped)


def iter_turns(paths, catalog: Catalog | None = None, config: TurnConfig | None = None,
               skipped: SkipCounter | None = None):
    config = config or TurnConfig()
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        for dialogue in read_dialogues(path, skip_bad=config.skip_bad, skipped=skipped):
            yield from dialogue_turns(dialogue, catalog, config)


def build_turn_dataset(paths, catalog: Catalog | None = None, config: TurnConfig | None = None,
                       cache_dir: str | Path | None = None, catalog_files: Iterable[str | Path] = (),
                       use_cache: bool = True):
    """The turns of one or more dialogue files as a `datasets.Dataset`, saved under
    `<cache>/turns/<key>` where the key hashes the input files, `catalog_files` and the config; a second call
    with the same inputs loads it from disk."""
    import datasets

    config = config or TurnConfig()
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    key = combined_hash([*paths, *catalog_files], TURNS_VERSION, config.merge_consecutive, config.new_items_only,
                        config.skip_bad, catalog is None)
    target = default_cache_dir(cache_dir) / "turns" / key
    if use_cache and (target / "dataset_info.json").exists():
        return datasets.load_from_disk(str(target))
    skipped = SkipCounter()
    records = list(iter_turns(paths, catalog, config, skipped))
    features = datasets.Features({
        "dialogue_id": datasets.Value("string"), "source": datasets.Value("string"),
        "turn_index": datasets.Value("int32"),
        "context": [{"role": datasets.Value("string"), "text": datasets.Value("string")}],
        "feedback": datasets.Value("string"), "response": datasets.Value("string"),
        **{name: datasets.Sequence(datasets.Value("string")) for name in (
            "context_item_ids", "target_ids", "target_names", "new_target_ids", "all_target_ids", "liked_ids",
            "disliked_ids", "liked_attributes", "disliked_attributes", "target_attributes", "mentioned_genres",
            "mentioned_people")},
        "target_liked": datasets.Sequence(datasets.Value("int8")),
        "target_seen": datasets.Sequence(datasets.Value("int8")),
    })
    dataset = datasets.Dataset.from_list(records, features=features)
    if use_cache:
        dataset.save_to_disk(str(target))
        dataset = datasets.load_from_disk(str(target))
    return dataset
