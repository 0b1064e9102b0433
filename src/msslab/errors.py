"""Errors caused by the user's input (files, checkpoints, config values).

Entry points print these as one line naming the file or key, without a traceback;
anything else is a bug and keeps its traceback.
"""


class MsslabError(Exception):
    """Bad input: the message names the file or key and says what is wrong."""


class CheckpointError(MsslabError):
    """A checkpoint is missing, unreadable or not written by msslab-train."""


class AudioFileError(MsslabError):
    """An audio file to separate is missing, unreadable or would be overwritten."""


def exit_on_user_error(task):
    """Decorate an entry point's task: a :class:`MsslabError` ends it with one line and exit code 1."""
    import functools

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except MsslabError as exc:
            raise SystemExit(f"error: {exc}") from None

    return wrapper


class UnsafeConfigError(MsslabError):
    """A config read from a file names something to call that msslab does not allow (``msslab.trust``)."""
