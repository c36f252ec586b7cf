"""The recommender: prompt and answer format (`prompt`), the answer parser (`parse`), rewards (`rewards`),
reasoning-SFT traces (`traces`), generation (`generation`) and multi-turn GRPO against a simulator (`rl`)."""

from .parse import ParsedAnswer, parse_answer
from .prompt import PromptConfig, attribute_vocabulary, build_prompt, format_answer, stated_preferences
from .rewards import (RewardConfig, format_reward, preference_reward, recommendation_reward, score_answer,
                      total_reward)
from .traces import candidates_with_target, reasoning_answer, reasoning_examples

__all__ = ["ParsedAnswer", "PromptConfig", "RewardConfig", "attribute_vocabulary", "build_prompt",
           "candidates_with_target", "format_answer", "format_reward", "parse_answer", "preference_reward",
           "reasoning_answer", "reasoning_examples", "recommendation_reward", "score_answer", "stated_preferences",
           "total_reward"]
