"""Errors that describe a problem with the user's input (file, record, config, cluster).
The CLI prints these as one clear message instead of a traceback."""


class UserError(Exception):
    pass


class BadRecordError(UserError):
    """A data record that cannot be used; says which file and which record."""

    def __init__(self, source: str, index: int | str, reason: str):
        self.source, self.index, self.reason = source, index, reason
        super().__init__(f"{source}, record {index}: {reason}")


class RunStopped(Exception):
    """A run that cannot go on (e.g. a learner rank died); the message says where to resume from."""


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key and why."""
