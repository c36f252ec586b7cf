"""Small handmade files in both official formats, shared by the data and retriever tests."""

from __future__ import annotations

import json
from pathlib import Path

CATALOG_CSV = """movieId,movieName,nbMentions
111,Police Academy  (1984),10
222,Bridesmaids  (2011),8
333,"The Way, Way Back (2013)",3
444,How to Train Your Dragon ,5
555,Ghostbusters (1984),12
"""

MOVIE2INFO = {
    "Police Academy (1984)": {"title": "Police Academy", "year": "1984", "genre": ["comedy", "crime"],
                              "plot": "Misfits join the police.", "director": ["Hugh wilson"],
                              "writer": ["Neal israel"], "star": ["Steve guttenberg"], "imdb_id": "tt0087928"},
    "Bridesmaids (2011)": {"title": "Bridesmaids", "year": "2011", "genre": ["comedy", "romance"],
                           "plot": "A maid of honor struggles.", "director": ["Paul feig"],
                           "writer": ["Kristen wiig"], "star": ["Kristen wiig", "Maya rudolph"], "imdb_id": "tt1478338"},
    "How to Train Your Dragon (2010)": {"title": "How to Train Your Dragon", "year": "2010",
                                        "genre": ["animation", "adventure"], "plot": "A boy befriends a dragon.",
                                        "director": ["Dean deblois"], "writer": [], "star": ["Jay baruchel"],
                                        "imdb_id": "tt0892769"},
}

MOVIE_KG = {
    "555": {"dbpedia": "Ghostbusters", "director": ["Ivan Reitman"], "starring": ["Bill Murray", "Dan Aykroyd"]},
    "333": {"dbpedia": "The Way, Way Back", "director": ["Nat Faxon", "Jim Rash"], "starring": ["Steve Carell"]},
}

SEEKER_ID, RECOMMENDER_ID = 10, 20
_OFFSETS = (0, 5, 9, 12, 20, 25, 30, 35)


def redial_messages(*utterances: tuple[str, str]) -> list[dict]:
    """ReDial `messages` from ("S" | "R", text) pairs: seeker 10, recommender 20, ids from 1, fixed time offsets."""
    return [{"timeOffset": _OFFSETS[i], "text": text, "senderWorkerId": SEEKER_ID if who == "S" else RECOMMENDER_ID,
             "messageId": i + 1} for i, (who, text) in enumerate(utterances)]


# Seeker 10, recommender 20. The recommender mentions @555 (new) in message 3 and @222 (already mentioned by the
# seeker) plus @444 (new) in message 5; message 6 (seeker) mentions @111.
DIALOGUE = {
    "movieMentions": {"222": "Bridesmaids  (2011)", "555": "Ghostbusters (1984)", "444": "How to Train Your Dragon ",
                      "111": "Police Academy  (1984)"},
    "respondentQuestions": {"222": {"suggested": 0, "seen": 1, "liked": 1},
                            "555": {"suggested": 1, "seen": 1, "liked": 1},
                            "444": {"suggested": 1, "seen": 0, "liked": 2},
                            "111": {"suggested": 0, "seen": 1, "liked": 0}},
    "messages": redial_messages(("R", "Hi, what do you like?"), ("S", "I loved @222"), ("S", "comedies mostly"),
                                ("R", "Have you seen @555?"), ("S", "yes, loved it"), ("R", "Like @222 there is @444"),
                                ("S", "I hated @111 though"), ("R", "bye")),
    "conversationId": "42",
    "respondentWorkerId": 20,
    "initiatorWorkerId": 10,
    "initiatorQuestions": {"222": {"suggested": 0, "seen": 1, "liked": 1},
                           "555": {"suggested": 1, "seen": 1, "liked": 1},
                           "444": {"suggested": 1, "seen": 0, "liked": 2},
                           "111": {"suggested": 0, "seen": 1, "liked": 0}},
}

INSPIRED_MOVIE2INFO = {
    "Unknown Film (2000)": {"genre": ["Drama"], "star": ["Ann Example"], "director": ["Bo Example"],
                            "writer": ["Bo Example (screenplay)"], "plot": "A film nobody knows."},
}

INSPIRED_HEADER = ("dialog_id\tutt_id\tspeaker\tturn_id\ttext\ttext_with_placeholder\tmovies\tgenres\tpeople_names\t"
                   "movie_dict\tgenre_dict\tactor_dict\tdirector_dict\tothers_dict\texpert_label\tsecond_label\t"
                   "fine_label\tcoarse_label\tmovie_id")


def inspired_row(dialog_id, utt_id, speaker, text, movies="", genres="", people="",
                 movie_dict="{'Bridesmaids (2011)': 0, 'Ghostbusters (1984)': 1}"):
    return "\t".join([dialog_id, str(utt_id), speaker, str(utt_id), text, text, movies, genres, people, movie_dict,
                      "{'comedy': 0}", "{}", "{}", "", "no_strategy", "", "accept_rating_good", "accept_new", "abc"])


INSPIRED_ROWS = [
    inspired_row("d1", 1, "RECOMMENDER", "Hello! What do you like?"),
    inspired_row("d1", 2, "SEEKER", "Comedies, like Bridesmaids", movies="Bridesmaids (2011)", genres="comedy"),
    inspired_row("d1", 3, "RECOMMENDER", "Try Ghostbusters or Unknown Film",
                 movies="Ghostbusters (1984); Unknown Film (1999)", people="Bill Murray"),
    inspired_row("d1", 4, "SEEKER", "Great, thanks"),
    inspired_row("d2", 1, "SEEKER", "Any horror?", genres="horror"),
    inspired_row("d2", 2, "RECOMMENDER", "Police Academy is not horror but fun", movies="Police Academy (1984)"),
]


def write_data_dir(root: Path, dialogues=(DIALOGUE,)) -> Path:
    """A data folder laid out like ../shared/data with the handmade files."""
    redial = root / "redial"
    redial.mkdir(parents=True, exist_ok=True)
    (redial / "movies_with_mentions.csv").write_text(CATALOG_CSV)
    (redial / "movie2info.json").write_text(json.dumps(MOVIE2INFO))
    (redial / "movie_kg.json").write_text(json.dumps(MOVIE_KG))
    with open(redial / "test_public.jsonl", "w") as f:
        for d in dialogues:
            f.write(json.dumps(d) + "\n")
    inspired = root / "inspired"
    inspired.mkdir(exist_ok=True)
    (inspired / "movie2info.json").write_text(json.dumps(INSPIRED_MOVIE2INFO))
    (inspired / "dev.tsv").write_text("\n".join([INSPIRED_HEADER, *INSPIRED_ROWS]) + "\n")
    return root
