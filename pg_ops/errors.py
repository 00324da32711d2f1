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
