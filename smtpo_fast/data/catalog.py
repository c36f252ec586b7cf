"""The item catalog: ReDial movie ids and names joined to their metadata (DBpedia attributes from
`movie_kg.json` by id, IMDb-style info from `movie2info.json` by normalised "title (year)"), and the join of
INSPIRED's titles to the same ids."""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataFormatError

YEAR_SUFFIX = re.compile(r"\s*\((\d{4})\)\s*$")
# Articles moved to the end ("Matrix, The") in some sources.
TRAILING_ARTICLE = re.compile(r"^(.*),\s*(the|a|an)$")
ATTRIBUTE_FIELDS = ("genre", "director", "star", "writer")


def split_title_year(name: str) -> tuple[str, str | None]:
    """'Police Academy  (1984)' -> ('Police Academy', '1984'); a name without a year gives (name, None)."""
    name = " ".join(str(name).split())
    match = YEAR_SUFFIX.search(name)
    if match:
        return name[: match.start()].strip(), match.group(1)
    return name, None


def normalise_title(title: str) -> str:
    """A matching key for a title: accents folded, lower case, '&' -> 'and', a trailing ', The' moved to the
    front, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", str(title)).encode("ascii", "ignore").decode()
    text = " ".join(text.lower().replace("&", " and ").split())
    match = TRAILING_ARTICLE.match(text)
    if match:
        text = f"{match.group(2)} {match.group(1)}"
    text = re.sub(r"[^a-z0-9 ]+", " ", text)
    return " ".join(text.split())


def normalise_name(name: str) -> str:
    """Key for 'Title (Year)' names: normalised title plus the year when present."""
    title, year = split_title_year(name)
    key = normalise_title(title)
    return f"{key} ({year})" if year else key


@dataclass
class Item:
    item_id: str
    name: str  # whitespace-collapsed name as ReDial gives it
    title: str
    year: str | None
    mentions: int = 0
    genres: list[str] = field(default_factory=list)
    directors: list[str] = field(default_factory=list)
    stars: list[str] = field(default_factory=list)
    writers: list[str] = field(default_factory=list)
    plot: str = ""
    sources: list[str] = field(default_factory=list)  # which metadata files matched: "kg", "info"

    @property
    def has_metadata(self) -> bool:
        return bool(self.sources)

    def attributes(self) -> list[str]:
        """Typed attribute strings such as 'genre:comedy', 'director:will gluck' (lower case)."""
        out = []
        for kind, values in (("genre", self.genres), ("director", self.directors), ("star", self.stars),
                             ("writer", self.writers)):
            for v in values:
                out.append(f"{kind}:{' '.join(v.lower().split())}")
        return out

    def text(self, plot_chars: int = 300) -> str:
        """The item text the semantic view encodes: title, year and metadata in one line."""
        parts = [f"{self.title} ({self.year})" if self.year else self.title]
        if self.genres:
            parts.append("Genre: " + ", ".join(self.genres[:4]))
        if self.directors:
            parts.append("Director: " + ", ".join(self.directors[:2]))
        if self.stars:
            parts.append("Starring: " + ", ".join(self.stars[:4]))
        if self.plot:
            parts.append(self.plot[:plot_chars])
        return ". ".join(parts)


def _merge_unique(target: list[str], values: Iterable[str]) -> None:
    seen = {v.lower() for v in target}
    for v in values:
        v = " ".join(str(v).split())
        # DBpedia names carry disambiguators such as "Jerry Zucker (film director)".
        v = re.sub(r"\s*\([^)]*\)$", "", v)
        if v and v.lower() not in seen:
            target.append(v)
            seen.add(v.lower())


class Catalog:
    """Items by id, with name lookup. Build it with `Catalog.from_files` (ReDial) or construct it directly."""

    def __init__(self, items: Iterable[Item]):
        self.items: dict[str, Item] = {}
        for item in items:
            self.items[item.item_id] = item
        self.ids = list(self.items)
        self.index = {item_id: i for i, item_id in enumerate(self.ids)}
        self._by_name: dict[str, str] = {}
        self._by_title: dict[str, list[str]] = {}
        for item in self.items.values():
            self._by_name.setdefault(normalise_name(item.name), item.item_id)
            self._by_title.setdefault(normalise_title(item.title), []).append(item.item_id)
        self.match_report: dict = {}
        self.inspired_report: dict = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item_id: str) -> Item:
        return self.items[item_id]

    def __contains__(self, item_id) -> bool:
        return item_id in self.items

    def resolve(self, name: str) -> str | None:
        """The catalog id for a 'Title (Year)' name: exact normalised name, else the title alone when it names
        exactly one item (or when the name has no year and one of the items carries no year either)."""
        key = normalise_name(name)
        if key in self._by_name:
            return self._by_name[key]
        title, year = split_title_year(name)
        candidates = self._by_title.get(normalise_title(title), [])
        if len(candidates) == 1:
            found = self.items[candidates[0]]
            # Same title, different known years: a remake, not the same movie.
            if year and found.year and abs(int(year) - int(found.year)) > 1:
                return None
            return candidates[0]
        if year and candidates:
            close = [c for c in candidates if self.items[c].year and abs(int(self.items[c].year) - int(year)) <= 1]
            if len(close) == 1:
                return close[0]
        return None

    @classmethod
    def from_files(cls, movies_csv: str | Path, kg_json: str | Path | None = None,
                   info_jsons: Iterable[str | Path] = ()) -> "Catalog":
        """ReDial's `movies_with_mentions.csv` joined to `movie_kg.json` (by id) and any number of
        `movie2info.json` files (by normalised name; earlier files win)."""
        items = list(read_movies_csv(movies_csv))
        catalog = cls(items)
        if kg_json is not None and Path(kg_json).exists():
            with open(kg_json, encoding="utf-8") as f:
                kg = json.load(f)
            for item_id, entry in kg.items():
                item = catalog.items.get(str(item_id))
                if item is None or not isinstance(entry, dict):
                    continue
                before = len(item.directors) + len(item.stars) + len(item.writers)
                _merge_unique(item.directors, entry.get("director", []))
                _merge_unique(item.stars, entry.get("starring", []))
                _merge_unique(item.writers, entry.get("writer", []))
                if len(item.directors) + len(item.stars) + len(item.writers) > before:
                    item.sources.append("kg")
        for info_path in info_jsons:
            if Path(info_path).exists():
                catalog.join_info(MovieInfo(info_path))
        return catalog

    def join_info(self, info: "MovieInfo", items: Iterable[Item] | None = None, year_tolerance: int | None = 1) -> None:
        """Add `movie2info.json` metadata to the items (default: all) that have none from such a file yet."""
        for item in items if items is not None else self.items.values():
            if "info" in item.sources:
                continue
            entry = info.find(item.name, year_tolerance)
            if entry is None:
                continue
            _merge_unique(item.genres, [g.lower() for g in entry.get("genre", [])])
            _merge_unique(item.directors, entry.get("director", []))
            _merge_unique(item.stars, entry.get("star", []))
            _merge_unique(item.writers, entry.get("writer", []))
            if not item.plot and entry.get("plot"):
                item.plot = " ".join(str(entry["plot"]).replace("\u200b", "").split())
            if not item.year and entry["_year"]:
                item.year = entry["_year"][:4]
            item.sources.append("info")

    def add_item(self, item: Item) -> None:
        self.items[item.item_id] = item
        self.index[item.item_id] = len(self.ids)
        self.ids.append(item.item_id)
        self._by_name.setdefault(normalise_name(item.name), item.item_id)
        self._by_title.setdefault(normalise_title(item.title), []).append(item.item_id)

    def match_rates(self, mentioned: Counter | None = None) -> dict:
        """Share of items (and of mentions, when `mentioned` counts them) with metadata, per source and in all."""
        ids = list(mentioned) if mentioned is not None else self.ids
        ids = [i for i in ids if i in self.items]
        weights = mentioned if mentioned is not None else Counter({i: 1 for i in ids})
        total_items = max(len(ids), 1)
        total_mentions = max(sum(weights[i] for i in ids), 1)
        out = {"items": len(ids), "mentions": sum(weights[i] for i in ids)}
        for label, test in (("kg", lambda it: "kg" in it.sources), ("info", lambda it: "info" in it.sources),
                            ("any", lambda it: it.has_metadata)):
            hit = [i for i in ids if test(self.items[i])]
            out[f"{label}_item_rate"] = len(hit) / total_items
            out[f"{label}_mention_rate"] = sum(weights[i] for i in hit) / total_mentions
        return out


class MovieInfo:
    """A `movie2info.json` file ("Title (Year)" -> title, year, genre, plot, director, writer, star) indexed by
    normalised name and by normalised title."""

    def __init__(self, path: str | Path):
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        self.by_name: dict[str, dict] = {}
        self.by_title: dict[str, list[dict]] = {}
        for key, entry in info.items():
            if not isinstance(entry, dict):
                continue
            title = entry.get("title") or split_title_year(key)[0]
            year = str(entry.get("year") or split_title_year(key)[1] or "")
            entry = dict(entry, _title=title, _year=year)
            self.by_name.setdefault(normalise_name(key), entry)
            self.by_title.setdefault(normalise_title(title), []).append(entry)

    def find(self, name: str, year_tolerance: int | None = 1) -> dict | None:
        """Exact normalised 'title (year)', else the title alone when one entry has it (and, with a
        `year_tolerance`, its year is that close; None ignores years)."""
        entry = self.by_name.get(normalise_name(name))
        if entry is not None:
            return entry
        title, year = split_title_year(name)
        options = self.by_title.get(normalise_title(title), [])
        if year and year_tolerance is not None:
            options = [e for e in options if not e["_year"][:4].isdigit()
                       or abs(int(e["_year"][:4]) - int(year)) <= year_tolerance]
        return options[0] if len(options) == 1 else None


def read_movies_csv(path: str | Path):
    """`movieId,movieName,nbMentions` rows (header required) as `Item`s."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:2] != ["movieId", "movieName"]:
            raise DataFormatError(path, 1, "header must start with movieId,movieName")
        for line_no, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 2 or not row[0].strip():
                raise DataFormatError(path, line_no, "expected movieId,movieName[,nbMentions]")
            name = " ".join(row[1].split())
            title, year = split_title_year(name)
            mentions = int(row[2]) if len(row) > 2 and row[2].strip().isdigit() else 0
            yield Item(item_id=row[0].strip(), name=name, title=title, year=year, mentions=mentions)


def load_catalog(data_root: str | Path | None = None, include_inspired: bool = True) -> Catalog:
    """The ReDial catalog from a data folder (`<root>/redial/...`, as `data_dir()` or `smtpo data synth` lays
    it out), with match rates over the items its dialogue files mention in `catalog.match_report`; with
    `include_inspired` and an `<root>/inspired/` folder, INSPIRED's movies joined too (`catalog.inspired_report`)."""
    from .paths import data_dir
    from .redial import read_redial

    root = Path(data_root) if data_root else data_dir()
    redial = root / "redial"
    catalog = Catalog.from_files(redial / "movies_with_mentions.csv", redial / "movie_kg.json",
                                 [redial / "movie2info.json"])
    mentioned: Counter = Counter()
    for jsonl in sorted(redial.glob("*.jsonl")):
        for dialogue in read_redial(jsonl, skip_bad=True):
            for utt in dialogue.utterances:
                mentioned.update(utt.item_ids)
    catalog.match_report = catalog.match_rates(mentioned)
    if include_inspired and (root / "inspired").is_dir():
        catalog.inspired_report = add_inspired_items(catalog, root / "inspired")
    return catalog


def add_inspired_items(catalog: Catalog, inspired: Path) -> dict:
    """Join the movies INSPIRED dialogues mention to the catalog: by ReDial id where the normalised title
    resolves, else as new items `title:<Title (Year)>` with metadata from INSPIRED's `movie2info.json` (matched on
    the title without the year, as that file's years often differ) or ReDial's. Returns match rates over the
    mentioned movies."""
    from .inspired import read_inspired

    mentioned: Counter = Counter()
    for tsv in sorted(inspired.glob("*.tsv")):
        for dialogue in read_inspired(tsv, skip_bad=True):
            for utt in dialogue.utterances:
                mentioned.update(utt.item_ids)
    infos = [MovieInfo(p) for p in (inspired / "movie2info.json", inspired.parent / "redial" / "movie2info.json")
             if p.exists()]
    joined, with_meta = Counter(), Counter()
    for name, count in mentioned.items():
        item_id = catalog.resolve(name)
        if item_id is not None:
            joined[name] = count
        else:
            item_id = f"title:{name}"
            if item_id not in catalog:
                title, year = split_title_year(name)
                item = Item(item_id=item_id, name=name, title=title, year=year)
                for info in infos:
                    catalog.join_info(info, [item], year_tolerance=None)
                catalog.add_item(item)
        if catalog[item_id].has_metadata:
            with_meta[name] = count
    items, mentions = max(len(mentioned), 1), max(sum(mentioned.values()), 1)
    return {"items": len(mentioned), "mentions": sum(mentioned.values()),
            "redial_id_item_rate": len(joined) / items, "redial_id_mention_rate": sum(joined.values()) / mentions,
            "metadata_item_rate": len(with_meta) / items, "metadata_mention_rate": sum(with_meta.values()) / mentions}
