"""The SFT configuration: a dataclass whose documented fields double as `smtpo train ...` flags and load from YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SFTConfig:
    """Everything the thin SFT loop needs (model choice lives with the caller)."""

    output_dir: str = "runs/sft"
    """Where checkpoints, TensorBoard scalars and the loss curve go."""
    max_steps: int = 0
    """Optimizer steps to run; 0 means `epochs` full passes over the data."""
    epochs: float = 1.0
    """Passes over the data when max_steps is 0 (fractions allowed)."""
    batch_size: int = 8
    """Sequences per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (the loss is averaged over all response tokens of the step)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (not applied to biases and norms)."""
    warmup_steps: int = 10
    """Linear warmup steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine decays to this fraction of the peak learning rate."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables."""
    max_length: int = 512
    """Longest tokenised example; longer ones are cut from the left of the prompt (the response is kept)."""
    packing: bool = False
    """Concatenate examples into rows of max_length tokens (no padding; attention crosses example boundaries, as
    in TRL's classic packing). Off: length bucketing, where each micro-batch holds examples of similar length."""
    bucket_size: int = 64
    """Length bucketing: examples are shuffled, then sorted by length within windows of bucket_size micro-batches."""
    seed: int = 0
    """Seed of data order, dropout and initialisation of adapters."""
    bf16: bool = True
    """bfloat16 autocast on CUDA (ignored on CPU unless cpu_bf16)."""
    cpu_bf16: bool = False
    """bfloat16 autocast on CPU too: about 2x faster for a 135M model on a CPU with AMX-bf16 (1 thread: 12 s vs
    25-30 s for fwd+bwd of 8 x 320 tokens, LoRA), slower than float32 for the tiny preset."""
    device: str = "auto"
    """"auto" (cuda when available), "cpu" or "cuda"."""
    log_every: int = 10
    """Steps between TensorBoard scalars and progress-bar updates."""
    save_every: int = 0
    """Steps between checkpoints (0: only at the end and on Ctrl-C)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep on disk."""
    progress: bool = True
    """Show a tqdm progress bar with loss and tokens/s."""
    max_minutes: float = 0.0
    """Training-time budget of the run (0: none). The schedule shrinks max_steps to what the budget allows at
    the measured speed (so the cosine still ends at its floor; the run is then timing-dependent), and a run that
    still overruns stops at a step boundary, saves and writes `final/`."""
    resume: bool = True
    """Continue from the latest checkpoint in output_dir when one exists."""


def load_yaml_config(cls, path: str | Path | None, **overrides):
    """A dataclass instance from a YAML mapping of field values (unknown keys are an error naming them), with
    `overrides` (e.g. CLI flags the user set) applied last."""
    import yaml

    values = {}
    if path:
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of {cls.__name__} fields")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{path}: unknown {cls.__name__} field(s): {', '.join(unknown)}")
    values.update(overrides)
    return cls(**values)
