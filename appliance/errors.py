"""Errors that reach an operator.

Every failure a person can act on is an `ApplianceError` whose message says what, where and
why; the CLI prints it without a traceback and exits with its `exit_code`.
"""


class ApplianceError(Exception):
    """A failure with a message written for the operator."""

    exit_code = 1


class ConfigError(ApplianceError):
    """A configuration file is missing, unreadable or invalid."""

    exit_code = 2


class ModelError(ApplianceError):
    """A model file cannot be used (not GGUF, truncated, refused by llama.cpp or by policy)."""


class AdapterError(ApplianceError):
    """A LoRA adapter file cannot be used with the loaded model."""


class DependencyError(ApplianceError):
    """An installed dependency differs from the one this version was built against."""


class DataError(ApplianceError):
    """Training or evaluation data cannot be used (missing file, or no valid record left)."""


class TrainingError(ApplianceError):
    """A training run could not start or did not finish (the reason says which and why)."""
