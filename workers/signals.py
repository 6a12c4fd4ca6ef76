"""Changes Django sees that may take away what an open event socket shows, announced to those sockets.

A logout ends the sockets of that session at once. Saving or deleting a user, changing a user's groups,
a runtime's groups, a runtime row or deleting a group asks the sockets concerned (their channel-layer
groups, workers.policy.policy_group) to check their access again, once the change is committed so that the
check reads it. The announcement reaches every Backend process over a shared (Redis) channel layer,
including from ``manage.py`` commands; without one it reaches the sockets of the process that made the
change, and the others find it at their next look (workers.sockets).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, User
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from django.http import HttpRequest

from runtimes.models import Runtime
from workers.policy import policy_group
from workers.sockets import announce

CHECK = {"type": "policy.check"}
SESSION_ENDED = {"type": "policy.session_ended"}
# What a reverse ``clear()`` or a group's deletion is about to take away, kept on the instance until after.
_STASH = "_yoi_policy_stash"


def _after_commit(groups: list[str], message: dict[str, str]) -> None:
    if groups:
        transaction.on_commit(lambda: announce(groups, message), robust=True)


def _user_groups(user_ids: Any) -> list[str]:
    return [policy_group("user", str(pk)) for pk in sorted(user_ids or ())]


def _runtime_groups(runtime_ids: Any) -> list[str]:
    return [policy_group("runtime", rid) for rid in sorted(runtime_ids or ())]


def session_logged_out(sender: type[User], request: HttpRequest | None, user: User | None, **kwargs: Any) -> None:
    """``user_logged_out``: the sockets opened with this session end (4401)."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        _after_commit([policy_group("session", session_key)], SESSION_ENDED)


def user_changed(sender: type[User], instance: User, **kwargs: Any) -> None:
    """A user saved or deleted: its sockets check again (deactivated, deleted, staff flag, password)."""
    if set(kwargs.get("update_fields") or ()) == {"last_login"}:
        return  # every login writes this; it changes no access
    _after_commit(_user_groups([instance.pk]), CHECK)


def user_memberships_changed(
    sender: Any, instance: User | Group, action: str, reverse: bool, pk_set: set[int] | None, **kwargs: Any
) -> None:
    """``user.groups`` or ``group.user_set`` changed: the users concerned check again."""
    if not reverse:
        user_ids: Any = [instance.pk]
    elif action == "pre_clear":
        setattr(instance, _STASH, list(instance.user_set.values_list("pk", flat=True)))  # type: ignore[union-attr]
        return
    else:
        user_ids = pk_set if action != "post_clear" else getattr(instance, _STASH, ())
    if action in {"post_add", "post_remove", "post_clear"}:
        _after_commit(_user_groups(user_ids), CHECK)


def runtime_memberships_changed(
    sender: Any, instance: Runtime | Group, action: str, reverse: bool, pk_set: set[int] | None, **kwargs: Any
) -> None:
    """``runtime.groups`` or ``group.runtimes`` changed: the sockets on those runtimes check again."""
    if not reverse:
        assert isinstance(instance, Runtime)
        runtime_ids: Any = [instance.runtime_id]
    elif action == "pre_clear":
        assert isinstance(instance, Group)
        setattr(instance, _STASH, list(instance.runtimes.values_list("runtime_id", flat=True)))
        return
    elif action == "post_clear":
        runtime_ids = getattr(instance, _STASH, ())
    else:
        runtime_ids = Runtime.objects.filter(pk__in=pk_set or ()).values_list("runtime_id", flat=True)
    if action in {"post_add", "post_remove", "post_clear"}:
        _after_commit(_runtime_groups(runtime_ids), CHECK)


def group_deleting(sender: type[Group], instance: Group, **kwargs: Any) -> None:
    """Before a group goes (its memberships go with it, without m2m signals): note who it concerns."""
    users = list(instance.user_set.values_list("pk", flat=True))
    runtimes = list(instance.runtimes.values_list("runtime_id", flat=True))
    setattr(instance, _STASH, (users, runtimes))


def group_deleted(sender: type[Group], instance: Group, **kwargs: Any) -> None:
    """A group is gone: its users and the sockets on its runtimes check again."""
    users, runtimes = getattr(instance, _STASH, ((), ()))
    _after_commit(_user_groups(users) + _runtime_groups(runtimes), CHECK)


def runtime_changed(sender: type[Runtime], instance: Runtime, **kwargs: Any) -> None:
    """A runtime row saved or deleted (admin, ``sync_runtimes``): its sockets check again."""
    _after_commit(_runtime_groups([instance.runtime_id]), CHECK)


def connect() -> None:
    """Connect the receivers (from WorkersConfig.ready)."""
    uid = "workers.signals."
    user_logged_out.connect(session_logged_out, dispatch_uid=uid + "logged_out")
    post_save.connect(user_changed, sender=User, dispatch_uid=uid + "user_saved")
    post_delete.connect(user_changed, sender=User, dispatch_uid=uid + "user_deleted")
    m2m_changed.connect(user_memberships_changed, sender=User.groups.through, dispatch_uid=uid + "user_groups")
    m2m_changed.connect(runtime_memberships_changed, sender=Runtime.groups.through, dispatch_uid=uid + "rt_groups")
    pre_delete.connect(group_deleting, sender=Group, dispatch_uid=uid + "group_deleting")
    post_delete.connect(group_deleted, sender=Group, dispatch_uid=uid + "group_deleted")
    post_save.connect(runtime_changed, sender=Runtime, dispatch_uid=uid + "runtime_saved")
    post_delete.connect(runtime_changed, sender=Runtime, dispatch_uid=uid + "runtime_deleted")
