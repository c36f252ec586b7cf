"""The thin training loops: `SFTTrainer` (shared by the simulator and the recommender), checkpoints, configs."""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import SFTConfig, load_yaml_config
from .data import IGNORE_INDEX, BatchPlan, collate, tokenize_example
from .sft import CosineWithWarmup, SFTTrainer, TrainResult, response_nll, sequence_loss

__all__ = ["IGNORE_INDEX", "BatchPlan", "CosineWithWarmup", "SFTConfig", "SFTTrainer", "TrainResult", "collate",
           "latest_checkpoint", "load_checkpoint", "load_yaml_config", "response_nll", "save_checkpoint",
           "sequence_loss", "tokenize_example"]
