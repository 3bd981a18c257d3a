"""User-facing errors: one clear message naming the file, key or value and the fix."""


class PipelineError(RuntimeError):
    """Bad input or state the user can fix; the CLI prints the message without a traceback."""
