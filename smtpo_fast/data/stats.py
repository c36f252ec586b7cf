"""`smtpo data stats`: counts per dialogue file, recommendation turns, and catalog match rates."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .catalog import load_catalog
from .errors import SkipCounter
from .turns import TurnConfig, dialogue_turns, read_dialogues


def file_stats(path: Path, catalog, skip_bad: bool = False) -> dict:
    skipped = SkipCounter()
    counts = Counter()
    items, targets_in = Counter(), Counter()
    for dialogue in read_dialogues(path, skip_bad=skip_bad, skipped=skipped):
        counts["dialogues"] += 1
        counts["messages"] += len(dialogue.utterances)
        turns = dialogue_turns(dialogue, catalog, TurnConfig(merge_consecutive=False))
        counts["recommendation_turns"] += len(turns)
        for t in turns:
            if t["new_target_ids"] and t["context"]:
                counts["new_item_turns_with_context"] += 1
                counts["new_target_pairs"] += len(t["new_target_ids"])
            for i in t["all_target_ids"]:
                targets_in["in_catalog" if i in catalog else "not_in_catalog"] += 1
        for utt in dialogue.utterances:
            items.update(utt.item_ids)
    out = dict(counts)
    out["distinct_items"] = len(items)
    total = sum(targets_in.values())
    out["targets_in_catalog_rate"] = targets_in["in_catalog"] / total if total else 0.0
    out["skipped_lines"] = skipped.count
    if skipped.count:
        out["skipped_report"] = skipped.report()
    return out


def dataset_stats(root: Path, skip_bad: bool = False) -> dict:
    catalog = load_catalog(root)
    report = {"catalog_items": len(catalog), "metadata_match": catalog.match_report,
              "inspired_match": catalog.inspired_report, "files": {}}
    files = sorted((root / "redial").glob("*.jsonl")) + sorted((root / "inspired").glob("*.tsv"))
    for path in files:
        report["files"][str(path.relative_to(root))] = file_stats(path, catalog, skip_bad)
    return report


def format_stats(report: dict) -> str:
    m = report["metadata_match"]
    lines = [f"catalog: {report['catalog_items']} items",
             f"metadata match over the {m['items']} items mentioned in the ReDial files ({m['mentions']} mentions):",
             f"  movie_kg.json by id:            {m['kg_item_rate']:.1%} of items, {m['kg_mention_rate']:.1%} of mentions",
             f"  movie2info.json by name:        {m['info_item_rate']:.1%} of items, {m['info_mention_rate']:.1%} of mentions",
             f"  either:                         {m['any_item_rate']:.1%} of items, {m['any_mention_rate']:.1%} of mentions"]
    if report.get("inspired_match"):
        m = report["inspired_match"]
        lines += [f"INSPIRED movies ({m['items']} mentioned, {m['mentions']} mentions):",
                  f"  joined to a ReDial id by title: {m['redial_id_item_rate']:.1%} of items, "
                  f"{m['redial_id_mention_rate']:.1%} of mentions",
                  f"  with metadata (either file):    {m['metadata_item_rate']:.1%} of items, "
                  f"{m['metadata_mention_rate']:.1%} of mentions"]
    for name, s in report["files"].items():
        lines.append(f"{name}:")
        for key, value in s.items():
            lines.append(f"  {key}: {value:.1%}" if isinstance(value, float) else f"  {key}: {value}")
    return "\n".join(lines)
