"""The exceptions the command-line tools turn into exit codes (``cli.py``); no dependencies, imported anywhere."""


class UserError(ValueError):
    """Something the user gave is wrong; the message names the key, file or value (and what would be right)."""


class ResumeRefused(UserError):
    """A run folder whose checkpoints this run must not resume (another model, method, teacher or process
    count): refused, never treated as damage (``checkpointing.restore_latest`` falls back only past damage)."""


class Diverged(FloatingPointError):
    """A non-finite loss, metric or embedding: the message says which, at which step, and what was kept."""


class Preempted(Exception):
    """Raised after the checkpoint of a SIGTERM'd run is written; rerunning the same command resumes it."""
