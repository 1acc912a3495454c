"""The one base class for mistakes a person can fix: a bad file, field, setting, device or state.

Every module's own error (ConfigError, DatasetError, PackageError, SourceError, ...) derives from UserError and
from the built-in error it has always been (ValueError, RuntimeError, OSError), so callers may catch either.
The `inspection` command prints the message of any UserError and exits with status 2, so each message names
the file or field, what was expected and what was found. Imports nothing.
"""


class UserError(Exception):
    """A problem the user can fix; its message says where and what (the CLI exits 2 with it)."""
