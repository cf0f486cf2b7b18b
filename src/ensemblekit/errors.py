"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint, paths), not a bug.

    The message must be one clear line that says what is wrong and, where possible, how to fix it.
    """


class DataNotFoundError(UserError):
    """A data set could not be found in any of the places looked at."""


class ChecksumError(UserError):
    """A data file's MD5 sum does not match the official one."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, corrupt or incompatible."""
