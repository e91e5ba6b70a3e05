"""The one error of ``model/``: a checkpoint that cannot be found, read or run."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read or run. The message names it and says why."""
