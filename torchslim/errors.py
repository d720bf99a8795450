"""The exception family of torchslim; each carries its CLI exit code (README "Command line").

Example:
    >>> from torchslim.errors import ConfigError
    >>> ConfigError("bad").exit_code
    3
"""

from __future__ import annotations


class TorchslimError(Exception):
    """Base of every error torchslim raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code: int = 1


class UsageError(TorchslimError):
    """Wrong command-line usage: unknown name, missing file (exit 2)."""

    exit_code = 2


class ConfigError(TorchslimError, ValueError):
    """Invalid configuration or recipe (exit 3). ``problems`` lists each one with its field path."""

    exit_code = 3

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class UnsafeInputError(TorchslimError):
    """A file that is unsafe or malformed to load (exit 4)."""

    exit_code = 4


class UnsupportedModelError(TorchslimError):
    """A model (or some of its modules) the requested technique cannot handle (exit 5)."""

    exit_code = 5


class QualityGateError(TorchslimError):
    """The compressed model misses the quality budget (exit 6)."""

    exit_code = 6


class OutputExistsError(TorchslimError):
    """The output exists and ``--force`` was not given, another process is writing it, or an I/O error
    occurred: the message names it (no space left, permission denied, read-only file system) (exit 7)."""

    exit_code = 7


class RegistryError(TorchslimError, ValueError):
    """A programming error in registering a config or transform (duplicate or unknown)."""

    exit_code = 1


class MemoryPreflightError(UnsupportedModelError):
    """The job's estimated peak memory exceeds the memory available to the process (exit 5)."""
