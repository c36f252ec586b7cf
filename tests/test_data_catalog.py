import pytest

from smtpo_fast.data.catalog import Catalog, load_catalog, normalise_name, normalise_title, split_title_year
from smtpo_fast.data.paths import data_dir
from tests._data_fixtures import write_data_dir


@pytest.mark.parametrize("name, expected", [
    ("Police Academy  (1984)", ("Police Academy", "1984")),
    ("How to Train Your Dragon ", ("How to Train Your Dragon", None)),
    ("  The Way, Way Back (2013) ", ("The Way, Way Back", "2013")),
    ("1941 (1979)", ("1941", "1979")),
    ("(2015)", ("", "2015")),
])
def test_split_title_year(name, expected):
    assert split_title_year(name) == expected


@pytest.mark.parametrize("a, b", [
    ("Police Academy  (1984)", "Police Academy (1984)"),
    ("Amélie (2001)", "Amelie (2001)"),
    ("Matrix, The (1999)", "The Matrix (1999)"),
    ("Harold & Kumar", "Harold and Kumar"),
    ("Star Wars: Episode VIII – The Last Jedi (2017)", "Star Wars Episode VIII The Last Jedi (2017)"),
    ("Spider-Man: Homecoming", "spider man homecoming"),
])
def test_normalised_names_match(a, b):
    assert normalise_name(a) == normalise_name(b)


def test_normalisation_keeps_years_and_titles_apart():
    assert normalise_name("Ghostbusters (1984)") != normalise_name("Ghostbusters (2016)")
    assert normalise_title("It") != normalise_title("Us")


def test_catalog_joins_metadata_by_id_and_name(tmp_path):
    root = write_data_dir(tmp_path)
    catalog = load_catalog(root)
    assert len(catalog) == 6  # the five ReDial movies and one INSPIRED movie ReDial lacks
    police = catalog["111"]
    assert police.name == "Police Academy (1984)" and police.genres == ["comedy", "crime"]
    assert police.sources == ["info"]
    # No year in the ReDial name: joined by the unique title, year taken from the metadata.
    dragon = catalog["444"]
    assert dragon.sources == ["info"] and dragon.year == "2010"
    assert catalog["555"].sources == ["kg"] and catalog["555"].stars == ["Bill Murray", "Dan Aykroyd"]
    assert catalog["333"].directors == ["Nat Faxon", "Jim Rash"]
    assert "genre:comedy" in catalog["222"].attributes()
    assert catalog.resolve("Bridesmaids (2011)") == "222"
    assert catalog.resolve("Ghostbusters (2016)") is None  # a remake is another movie
    assert catalog.resolve("Ghostbusters (1984)") == "555"
    # INSPIRED's movie ReDial lacks joins its own movie2info.json by title (the file's year differs).
    unknown = catalog["title:Unknown Film (1999)"]
    assert unknown.directors == ["Bo Example"] and unknown.writers == ["Bo Example"] and unknown.genres == ["drama"]
    assert catalog.resolve("Unknown Film (1999)") == "title:Unknown Film (1999)"
    inspired = catalog.inspired_report
    assert inspired["items"] == 4 and inspired["redial_id_item_rate"] == 0.75 and inspired["metadata_item_rate"] == 1.0
    report = catalog.match_report
    # Mentioned in the handmade dialogue: 222 (info), 555 (kg), 444 (info), 111 (info).
    assert report["items"] == 4 and report["any_item_rate"] == 1.0
    assert report["kg_item_rate"] == 0.25 and report["info_item_rate"] == 0.75


def test_real_redial_match_rate():
    root = data_dir(required=False)
    if root is None or not (root / "redial" / "movie_kg.json").exists():
        pytest.skip("shared data not available")
    catalog = load_catalog(root)
    report = catalog.match_report
    assert report["any_mention_rate"] >= 0.95
    assert report["any_item_rate"] >= 0.95
    assert report["info_mention_rate"] >= 0.85 and report["kg_mention_rate"] >= 0.75
    if catalog.inspired_report:
        assert catalog.inspired_report["metadata_mention_rate"] >= 0.7
