"""Errors the user can fix: a config, a dataset, a reward function, a file in the run directory.

The command line prints each as `error: ...` and exits 1, with no traceback: the message names what is wrong and
where (key, file, row, function). Raised inside a Ray actor, one reaches the driver as the cause of a GroupError
(`cluster.actor_group`), whose message adds the phase and the actor; `user_error` finds it there. Anything else
is a bug of ours and keeps its traceback.
"""

from __future__ import annotations

from typing import Optional


class UserError(ValueError):
    """Something the user gave is wrong, and the message says what and where."""


def user_error(e: Optional[BaseException]) -> Optional[UserError]:
    """The UserError `e` is or was raised from (an actor's error reaches the driver through `raise ... from`, and
    Ray's RayTaskError keeps the actor's exception as `cause`), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, UserError):
            return e
        seen.add(id(e))
        e = getattr(e, "cause", None) if isinstance(getattr(e, "cause", None), BaseException) else e.__cause__
    return None
