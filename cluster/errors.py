"""The error ``cluster`` raises for a submission or job query that cannot go ahead."""


class JobsError(RuntimeError):
    """A submission or job query that cannot go ahead; the message says why and what to do.

    (``medr1`` prints it as one line, like a UserError; ``cluster`` does not import ``pipelines.errors``.)"""
