"""A user's mistakes, as exceptions: what is wrong, which file / key / record, what to do.

`cli.run_command` prints a `UserError` as one `error:` message and exits with code 1, without a
traceback (`HYDRA_FULL_ERROR=1` or `verbose=true` shows it); any other exception is a bug and
keeps its traceback. Each subclass also derives from the builtin type that code (and tests)
caught before it existed (`ValueError`, `FileNotFoundError`, `pickle.UnpicklingError`).

Standard library only: every layer (data included) may raise these.
"""

import pickle


class UserError(Exception):
    """A mistake in the config, the data, a checkpoint or the run's environment; the message
    names the culprit and says what to do."""


class ConfigError(UserError, ValueError):
    """A config key or combination that cannot run (names the key and the valid choices).
    `problems` lists every problem when there are several (the CLI prints one line each)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


class DataError(UserError, ValueError):
    """A problem with a dataset on disk (missing, corrupt, contradicting itself or its format);
    the message names the file and the record. `problems` lists every problem when there are
    several (the message shows the first few)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


class MissingDataError(DataError, FileNotFoundError):
    """A dataset file or folder that is not there."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read, written, or does not fit the run."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint path with no file behind it."""


class CheckpointMismatchError(CheckpointError, KeyError):
    """Weights whose tensors do not fit the model (missing or unexpected keys)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RefusedPickleError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint holding Python objects other than tensors and plain containers: refused,
    since unpickling them could run any code."""


def summarise(problems: list[str], header: str, limit: int = 10) -> str:
    """`header` and the first `limit` problems, one a line, with how many more there are."""
    lines = [header, *(f"  - {p}" for p in problems[:limit])]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more (m2f-doctor lists them all)")
    return "\n".join(lines)


class OutputFolderError(UserError, OSError):
    """An output folder (the run's, its checkpoints', W&B's) that cannot be written."""
