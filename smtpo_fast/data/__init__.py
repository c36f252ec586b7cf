"""ReDial / INSPIRED readers, the item catalog, the recommendation-turn view and the synthetic data generator."""

from .catalog import Catalog, Item, load_catalog, normalise_name, normalise_title, split_title_year
from .dialogue import RECOMMENDER, SEEKER, Dialogue, Utterance
from .errors import DataFormatError, SkipCounter
from .inspired import read_inspired, write_inspired
from .paths import cache_dir, data_dir
from .redial import read_redial, write_redial
from .synth import SynthConfig, generate
from .turns import TurnConfig, build_turn_dataset, dialogue_turns, iter_turns, read_dialogues

__all__ = [
    "Catalog", "Item", "load_catalog", "normalise_name", "normalise_title", "split_title_year", "RECOMMENDER",
    "SEEKER", "Dialogue", "Utterance", "DataFormatError", "SkipCounter", "read_inspired", "write_inspired",
    "cache_dir", "data_dir", "read_redial", "write_redial", "SynthConfig", "generate", "TurnConfig",
    "build_turn_dataset", "dialogue_turns", "iter_turns", "read_dialogues",
]
