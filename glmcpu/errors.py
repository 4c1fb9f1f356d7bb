class GlmcpuError(Exception):
    """A problem with the user's input (file, checkpoint, option) that has a one-line explanation.

    The CLI prints ``error: <message>`` for these and exits with status 1, without a traceback.
    """


class UnsupportedError(GlmcpuError):
    """A checkpoint or config feature glmcpu does not implement (message starts with 'unsupported:')."""
