"""One error type for malformed input, always naming the file and the line."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A record that does not match the official format. `path` and `line` (1-based) say where."""

    def __init__(self, path, line: int, message: str):
        self.path = str(path)
        self.line = line
        self.reason = message
        super().__init__(f"{self.path}:{line}: {message}")


class SkipCounter:
    """Counts (and keeps the first few of) the malformed records skipped under `--skip-bad`."""

    def __init__(self, keep: int = 5):
        self.count = 0
        self.examples: list[str] = []
        self.keep = keep

    def add(self, error: DataFormatError) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(str(error))

    def report(self) -> str:
        if not self.count:
            return "no malformed lines"
        return f"skipped {self.count} malformed line(s); first: " + " | ".join(self.examples)
