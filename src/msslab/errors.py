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
