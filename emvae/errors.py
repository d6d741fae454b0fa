"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class EmvaeError(Exception):
    """Base class for every error emvae expects a user to read and act on."""


class InputError(EmvaeError):
    """A file the user gave cannot be used: missing, malformed, or holding unusable data."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(EmvaeError):
    """Options that contradict each other or are out of range."""


class OutputExistsError(EmvaeError):
    """The output would overwrite something the user already has."""


class OutputError(EmvaeError):
    """An output cannot be written: the folder is read-only, missing or the disk is full."""
