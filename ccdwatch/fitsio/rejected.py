"""Why a raw file is refused: :class:`RejectedFile` and its stable reason codes; :class:`RawGone`,
a catalogued raw frame no longer on disk as it was catalogued; :class:`ProductGone`, the same of
one of our own products (a master) that a job reads."""

from __future__ import annotations

__all__ = ["ProductGone", "RawGone", "RejectedFile"]


class RejectedFile(Exception):
    """A raw file that must be quarantined (or, for the transient reasons, looked at again later).

    Parameters
    ----------
    reason : str
        Short stable code: ``not-regular-file``, ``symlink``, ``empty``, ``not-fits``,
        ``truncated-header``, ``truncated-data``, ``incomplete-tail`` (preallocated, not
        written yet), ``too-large``, ``no-image``, ``bad-header``, ``compressed-disabled`` or
        ``unreadable``.
    message : str
        A readable sentence; ``str(exc)`` returns it.
    """

    #: Reasons that a file still being written (or rewritten) also gives.
    TRANSIENT_REASONS = frozenset({"empty", "truncated-header", "truncated-data", "incomplete-tail"})

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """True when a camera that is still writing the file would give the same verdict."""
        return self.reason in self.TRANSIENT_REASONS

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"RejectedFile({self.reason!r}, {self.message!r})"


class RawGone(FileNotFoundError):
    """A catalogued raw frame is on disk under none of its paths with its catalogued content
    (deleted, or rewritten since it was catalogued). No fault of the job's other inputs."""

    def __init__(self, sha256: str, detail: str) -> None:
        super().__init__(f"raw data no longer available: {detail}")
        self.sha256 = sha256
        self.detail = detail

    def __reduce__(self) -> tuple[type[RawGone], tuple[str, str]]:
        return (RawGone, (self.sha256, self.detail))


class ProductGone(FileNotFoundError):
    """A catalogued product that a job reads (a master) is not on disk as its row records it:
    deleted, or (`ccdwatch.fitsio.read_product_hdus` given its SHA-256) its bytes changed since (a
    bad sector, an edit). No fault of the job or of the frames it would charge: the product is
    made again (`ccdwatch.pipeline.gone`)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"product no longer available: {detail}")
        self.path = path
        self.detail = detail

    def __reduce__(self) -> tuple[type[ProductGone], tuple[str, str]]:
        return (ProductGone, (self.path, self.detail))
