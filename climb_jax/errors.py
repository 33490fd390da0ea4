"""User-facing errors.

Anything a user can fix (a path, a config value, a corrupt file) raises `ClimbError` with a
message that says what to fix; `climb_jax.main` prints it without a traceback and exits 2.
"""


class ClimbError(Exception):
    """An error the user can act on; the message says what to fix."""


class ConfigError(ClimbError):
    """An invalid configuration: unknown key, wrong type, impossible schedule."""


class DataError(ClimbError):
    """A corpus, cache or evaluation file that cannot be used as it is."""


class CheckpointError(ClimbError):
    """A checkpoint that cannot be restored."""


class TrainingDiverged(ClimbError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
