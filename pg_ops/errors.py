"""One exception family whose str() is the one-line message a user sees."""


class PgOpsError(Exception):
    """A failure with a clear, single-line reason naming the thing and the cause."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class SpecError(PgOpsError):
    """A cluster spec that cannot be loaded."""


class LockHeld(PgOpsError):
    """Another topology change holds the cluster's lock."""


class LockLost(PgOpsError):
    """The topology lock was taken over by another holder while a change ran."""


class ConflictError(PgOpsError):
    """A compare-and-swap lost against a concurrent writer."""


class MemberError(PgOpsError):
    """A member could not be started, reached or changed."""


class ClusterExists(MemberError):
    """A cluster to be made (recover, blue/green) already exists: nothing of it may be removed."""


class Refused(PgOpsError):
    """A request pg_ops will not carry out as asked (a healthy primary to fail over, the primary
    to rebuild): nothing was changed. The person who asked is told; nobody is paged for it."""


class Unsupported(PgOpsError):
    """What a platform cannot do (yet): raised by its check_* methods before anything is touched."""


def first_line(error: BaseException | str) -> str:
    """The first line of an error's text, or its class name when it has none: psycopg, libpq
    and tools put the reason on the first line and details (DETAIL, HINT, a query) after it."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    return type(error).__name__ if isinstance(error, BaseException) else ""
