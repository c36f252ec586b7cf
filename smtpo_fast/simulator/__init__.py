"""User simulators: multi-task SFT data (`tasks`), the feedback tail and its parser (`feedback`), inference
(`UserSimulator`) and fidelity evaluation (`fidelity`)."""

from .feedback import Feedback, format_tail, parse_feedback
from .simulator import GenerationConfig, UserSimulator
from .tasks import (LABEL_FREE, TARGET_AWARE, Episode, TaskConfig, build_examples, dialogue_episodes,
                    dialogue_examples, episode_examples)

__all__ = ["LABEL_FREE", "TARGET_AWARE", "Episode", "Feedback", "GenerationConfig", "TaskConfig", "UserSimulator",
           "build_examples", "dialogue_episodes", "dialogue_examples", "episode_examples", "format_tail",
           "parse_feedback"]
