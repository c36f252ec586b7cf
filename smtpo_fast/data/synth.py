"""`smtpo data synth`: an offline generator of a ReDial-format dataset with its own invented catalog, so the whole
pipeline runs on a fresh machine without network. The seeker states preferences (genre, a favourite actor or
director, an era, a movie they liked) and the recommender's target is the catalog movie that best satisfies them,
so a recommender that reads the dialogue beats popularity."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

GENRES = ("action", "comedy", "drama", "horror", "romance", "sci-fi", "thriller", "animation", "fantasy", "western",
          "mystery", "musical")
GENRE_WORDS = {
    "action": ("a rogue agent", "a heist crew", "an ex-soldier", "explosive chases"),
    "comedy": ("a hapless groom", "two mismatched roommates", "a disastrous road trip", "an office prank war"),
    "drama": ("a grieving family", "a struggling teacher", "a fading boxer", "a small-town secret"),
    "horror": ("a haunted farmhouse", "a cursed doll", "something in the basement", "a masked stalker"),
    "romance": ("two strangers in Paris", "a summer love", "a second chance at love", "letters never sent"),
    "sci-fi": ("a colony ship", "a time loop", "a rogue AI", "first contact"),
    "thriller": ("a missing witness", "a double agent", "a stolen identity", "a ticking bomb"),
    "animation": ("a brave little fox", "talking toys", "a dragon who cannot fly", "a robot who paints"),
    "fantasy": ("a forgotten kingdom", "a young wizard", "an enchanted forest", "a dragon's hoard"),
    "western": ("a lone gunslinger", "a frontier town", "a cattle drive", "a train robbery"),
    "mystery": ("a locked-room murder", "a vanished heiress", "an old detective", "a coded diary"),
    "musical": ("a Broadway hopeful", "a rival choir", "a jazz club", "a dance marathon"),
}
ADJECTIVES = ("Silent", "Crimson", "Last", "Broken", "Golden", "Hidden", "Electric", "Midnight", "Frozen", "Wild",
              "Lost", "Burning", "Hollow", "Iron", "Velvet", "Savage", "Paper", "Neon", "Distant", "Secret")
NOUNS = ("River", "Empire", "Garden", "Signal", "Harbor", "Crown", "Shadow", "Orchard", "Machine", "Frontier",
         "Letter", "Carnival", "Horizon", "Labyrinth", "Voyage", "Sparrow", "Lantern", "Canyon", "Mirror", "Storm")
FIRST = ("Ava", "Liam", "Maya", "Noah", "Iris", "Owen", "Lena", "Felix", "Nora", "Hugo", "Ruby", "Jonah", "Tessa",
         "Milo", "Clara", "Ezra", "Vera", "Silas", "Hazel", "Theo", "Greta", "Julian", "Elsa", "Ronan")
LAST = ("Marlow", "Quint", "Hale", "Okafor", "Varga", "Lindqvist", "Sato", "Moreau", "Castellano", "Brandt",
        "Whitlock", "Achebe", "Novak", "Delacroix", "Ferreira", "Kowalski", "Nakamura", "Oyelaran", "Petrov", "Reyes")


@dataclass
class SynthConfig:
    """What `smtpo data synth` generates."""

    n_movies: int = 300
    """Size of the invented catalog."""
    n_directors: int = 40
    """Invented directors; each directs movies of one or two favourite genres."""
    n_actors: int = 80
    """Invented actors; each movie stars three."""
    n_dialogues: int = 1000
    """Dialogues in all; `test_fraction` of them go to the test file."""
    test_fraction: float = 0.2
    """Share of dialogues written to test_public.jsonl."""
    reject_rate: float = 0.3
    """Share of dialogues where the seeker turns the first suggestion down with a critique before the target."""
    seed: int = 0
    """Seed: the same seed gives byte-identical files."""


def _catalog(cfg: SynthConfig, rng: random.Random) -> list[dict]:
    people = [f"{f} {l}" for f in FIRST for l in LAST]
    rng.shuffle(people)
    directors = [(people[k], rng.sample(GENRES, 2)) for k in range(cfg.n_directors)]
    actors = people[cfg.n_directors:cfg.n_directors + cfg.n_actors]
    titles = [f"The {a} {n}" if rng.random() < 0.3 else f"{a} {n}" for a in ADJECTIVES for n in NOUNS]
    rng.shuffle(titles)
    movies = []
    for k in range(cfg.n_movies):
        director, favourite = directors[k % len(directors)]
        genre = favourite[k // len(directors) % 2]
        genres = [genre] + ([rng.choice([g for g in GENRES if g != genre])] if rng.random() < 0.3 else [])
        year = rng.randint(1970, 2019)
        stars = rng.sample(actors, 3)
        words = GENRE_WORDS[genre]
        plot = (f"A {genre} story about {rng.choice(words)} and {rng.choice(words)}, "
                f"set in the {year // 10 * 10}s.")
        movies.append({"id": str(200000 + k), "title": titles[k], "year": str(year), "genre": genres,
                       "director": [director], "star": stars, "writer": [director], "plot": plot,
                       # Zipf-like prior: some movies are simply mentioned more often.
                       "weight": 1.0 / (1 + k % 50) ** 0.6})
    return movies


def _name(movie: dict) -> str:
    # Like ReDial, some names carry a double space before the year and a few have no year at all.
    sep = "  " if int(movie["id"]) % 7 == 0 else " "
    return movie["title"] if int(movie["id"]) % 23 == 0 else f"{movie['title']}{sep}({movie['year']})"


def _dialogue(index: int, movies: list[dict], cfg: SynthConfig, rng: random.Random) -> dict:
    """One dialogue; the seeker's stated preferences pick the target."""
    target = rng.choices(movies, weights=[m["weight"] for m in movies])[0]
    genre = target["genre"][0]
    cue_kind = rng.choice(["star", "director", "era"])
    decade = int(target["year"]) // 10 * 10
    # A liked movie shares the director or a star with the target: the co-mention signal.
    kin = [m for m in movies if m is not target and (m["director"] == target["director"]
                                                     or set(m["star"]) & set(target["star"]))]
    liked = rng.choice(kin) if kin else rng.choice([m for m in movies if m is not target])
    others = [m for m in movies if genre in m["genre"] and m is not target and m is not liked]
    decoy = rng.choice(others) if others else rng.choice([m for m in movies if m is not target])
    mentions, seeker_q, recommender_q = {}, {}, {}
    messages = []

    def say(role: str, text: str):
        messages.append({"timeOffset": 7 * len(messages), "text": text,
                         "senderWorkerId": 1 if role == "seeker" else 2, "messageId": index * 100 + len(messages)})

    def mention(movie: dict, suggested: int, liked_flag: int) -> str:
        mentions[movie["id"]] = _name(movie)
        seeker_q[movie["id"]] = recommender_q[movie["id"]] = {"suggested": suggested, "seen": int(liked_flag != 2),
                                                             "liked": liked_flag}
        return f"@{movie['id']}"

    say("recommender", rng.choice(["Hi! What kind of movies are you in the mood for?", "Hello, what do you like to watch?"]))
    say("seeker", rng.choice([f"I really like {genre} movies.", f"Something {genre} please.", f"I'm into {genre}."]))
    if cue_kind == "star":
        cue = rng.choice(target["star"])
        say("seeker", rng.choice([f"Anything with {cue} would be great.", f"I love {cue}."]))
    elif cue_kind == "director":
        cue = target["director"][0]
        say("seeker", rng.choice([f"I like films directed by {cue}.", f"{cue} is my favourite director."]))
    else:
        say("seeker", f"Preferably something from the {decade}s.")
    say("recommender", "Have you seen anything you liked recently?")
    say("seeker", f"I loved {mention(liked, 0, 1)}.")
    if rng.random() < cfg.reject_rate:
        say("recommender", f"How about {mention(decoy, 1, 0)}?")
        reason = (f"I want one with {rng.choice(target['star'])}" if cue_kind != "star"
                  else f"I'd rather see something by {target['director'][0]}")
        say("seeker", f"I didn't like that one. {reason}.")
    say("recommender", f"Then you should watch {mention(target, 1, 1)}, a great {genre} film.")
    say("seeker", rng.choice(["Sounds perfect, thanks!", "I'll check it out.", "Great, thank you!"]))
    return {"movieMentions": mentions, "respondentQuestions": recommender_q, "messages": messages,
            "conversationId": str(900000 + index), "respondentWorkerId": 2, "initiatorWorkerId": 1,
            "initiatorQuestions": seeker_q}


def generate(out_dir: str | Path, cfg: SynthConfig | None = None) -> dict:
    """Write `<out>/redial/{train_sample,test_public}.jsonl, movies_with_mentions.csv, movie2info.json,
    movie_kg.json` (point SMTPO_DATA_DIR at `out`). Returns counts."""
    cfg = cfg or SynthConfig()
    rng = random.Random(cfg.seed)
    movies = _catalog(cfg, rng)
    dialogues = [_dialogue(k, movies, cfg, rng) for k in range(cfg.n_dialogues)]
    n_test = int(round(cfg.n_dialogues * cfg.test_fraction))
    out = Path(out_dir) / "redial"
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for d in dialogues:
        for movie_id in d["movieMentions"]:
            counts[movie_id] = counts.get(movie_id, 0) + 1
    for name, part in (("train_sample.jsonl", dialogues[n_test:]), ("test_public.jsonl", dialogues[:n_test])):
        with open(out / name, "w", encoding="utf-8") as f:
            for d in part:
                f.write(json.dumps(d) + "\n")
    with open(out / "movies_with_mentions.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["movieId", "movieName", "nbMentions"])
        for m in movies:
            writer.writerow([m["id"], _name(m), counts.get(m["id"], 0)])
    info = {f"{m['title']} ({m['year']})": {k: m[k] for k in ("title", "year", "genre", "plot", "director", "writer",
                                                                "star")} | {"imdb_id": f"tt9{m['id']}"}
            for m in movies}
    (out / "movie2info.json").write_text(json.dumps(info, indent=0), encoding="utf-8")
    kg = {m["id"]: {"dbpedia": f"{m['title']} (film)", "director": m["director"], "starring": m["star"],
                    "writer": m["writer"]} for m in movies}
    (out / "movie_kg.json").write_text(json.dumps(kg, indent=0), encoding="utf-8")
    (Path(out_dir) / "README.md").write_text(
        f"Synthetic ReDial-format data written by `smtpo data synth` (seed {cfg.seed}): {len(movies)} invented "
        f"movies, {cfg.n_dialogues - n_test} train and {n_test} test dialogues. Nothing here is real.\n")
    return {"movies": len(movies), "train_dialogues": cfg.n_dialogues - n_test, "test_dialogues": n_test}
