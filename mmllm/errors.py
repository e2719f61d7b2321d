"""Exceptions raised for bad user input, so callers can tell them from bugs."""


class MMLLMError(Exception):
    """Base class of every error mmllm raises on purpose."""


class CheckpointError(MMLLMError):
    """A checkpoint is missing, truncated, unsafe, or lacks a tensor we need."""


class UnsupportedArchitectureError(MMLLMError):
    """The LLM's architecture has no decoder-layer spec in :mod:`mmllm.architectures`."""


class LayerIndexError(MMLLMError, IndexError):
    """A requested layer does not exist in the LLM."""


class AssetMissingError(MMLLMError):
    """An embedded asset's registry package is not installed."""


class ConfigError(MMLLMError, ValueError):
    """A configuration file or dict is malformed."""


class DataError(MMLLMError, ValueError):
    """A data or annotation file is missing, malformed, or inconsistent."""


class TrainingError(MMLLMError):
    """Training or evaluation produced a value that must not be reported (NaN/inf loss or metric)."""
