"""One exception type for every failure a user can fix.

Its message is a single line that names the problem and the fix; the CLI prints it without a
traceback and the app shows it in the page.
"""


class XtokError(Exception):
    """A user-facing failure: one line, the problem and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
