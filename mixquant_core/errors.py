"""One exception family, so the CLI and the app can turn any user-facing fault into one line."""


class MixQuantError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class InvalidWeightsError(MixQuantError):
    """A layer holds NaN or Inf weights."""


class ModelUnavailableError(MixQuantError):
    """A model cannot be built or its weights cannot be found (offline, unknown name, bad file)."""


class UntrustedCodeError(ModelUnavailableError):
    """A model file is code (TorchScript, a pickled module) and the user has not said they trust it.
    The message says why; the CLI and the app each add how to opt in where they are."""


class DatasetError(MixQuantError):
    """An evaluation folder is missing, empty, unlabeled or unreadable."""


class PlanError(MixQuantError):
    """A plan file is malformed or does not fit the model it is applied to."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """A user-facing line: our errors already are one; others get their type and first line."""
    if isinstance(exc, MixQuantError):
        return str(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"
