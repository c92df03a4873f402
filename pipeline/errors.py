"""The one exception type a user sees from `convert`/`info`/loaders.

The CLI prints `str(err)` as a single line and exits non-zero, so every message
must make sense on its own: what was wrong, where, and what to do about it.
"""


class DataError(Exception):
    """Bad or unusable input data (archive, folder, converted file)."""
