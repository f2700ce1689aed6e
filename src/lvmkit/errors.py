"""Exceptions that lvmkit raises on purpose. The CLI prints them as one clear message, no traceback."""


class LvmkitError(Exception):
    """Base class: a problem the user can fix, described in the message."""


class ProvenanceError(LvmkitError):
    """Two artifacts that must come from the same encoder / corpus / bank do not."""


class ArtifactError(LvmkitError):
    """An artifact on disk is missing, truncated or inconsistent."""


class ConfigError(LvmkitError):
    """A configuration value is invalid; the message names the field and what is allowed."""


class CorpusError(LvmkitError):
    """Corpus input cannot be read; the message names the file and position."""


class RequestError(LvmkitError):
    """A request to the server (or an argument standing for one) is invalid; the API answers 422."""


class NotFoundError(LvmkitError):
    """A named thing (a run, a file under the runs directory) does not exist; the API answers 404."""
