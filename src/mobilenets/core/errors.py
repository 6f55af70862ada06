"""The one exception type for mistakes a user can make.

Library code raises [`MobileNetsError`][mobilenets.core.errors.MobileNetsError] for anything the
caller can fix (a bad name, a bad alpha, a weights file for another architecture); the CLI turns it
into one line on stderr and a non-zero exit. It subclasses ``ValueError`` so callers that already
catch that keep working.
"""


class MobileNetsError(ValueError):
    """A user-caused error; the message names the bad value and what is allowed."""
