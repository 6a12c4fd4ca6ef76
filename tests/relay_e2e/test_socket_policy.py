"""Live sockets follow policy on a real Backend (daphne, real sockets, real runtimes): every row of the rule.

One Backend serves the module (DEBUG on, so that the admin renders without collected static files), with
remote runtimes that tests disable, prune or delete, and embedded runtimes limited to a group. Every test
opens sockets, makes one change the way an operator or a user would — the console's logout, an admin form,
``sync_runtimes`` in another process — and measures the time until each socket has had its error frame and
close (printed with ``-s``). Upstreams left without a browser close as usual (the runtime's own count).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.relay_e2e.admin_client import AdminBrowser, FormValue
from tests.relay_e2e.conftest import Backend, RuntimeEntry
from tests.relay_e2e.helpers import wait_streams_open
from tests.relay_e2e.policy_helpers import (
    EmbeddedEntry,
    People,
    expect_closed,
    make_users,
    module_site,
    row_updated_at,
    watch,
    watch_new_worker,
)
from tests.relay_e2e.ws_client import WsClient
from tests.runtime_process import RuntimeProcess, create_worker, start_runtime

REMOTE_IDS = ("rt-open", "rt-admin-off", "rt-sync-off", "rt-prune", "rt-deleted")
EMBEDDED_IDS = ("rt-team", "rt-regroup")
USERS = {
    "u-logout": {},
    "u-deactivate": {},
    "u-delete": {},
    "u-leaves": {"groups": ["team"]},
    "u-regroup": {"groups": ["team"]},
    "u-runtimes": {},
    "operator": {"admin": True},
}
RUNTIME_GROUPS = {"rt-team": ["team", "ops"], "rt-regroup": ["team"]}


@dataclass
class Stage:
    """The module's Backend, its runtimes and its users."""

    backend: Backend
    runtimes: dict[str, RuntimeProcess]
    entries: list[RuntimeEntry | EmbeddedEntry]
    people: People
    _admin: AdminBrowser | None = None

    @property
    def admin(self) -> AdminBrowser:
        """The superuser's browser (one session, one CSRF cookie)."""
        if self._admin is None:
            self._admin = self.browser("operator")
        return self._admin

    def browser(self, username: str) -> AdminBrowser:
        """A user's browser (the admin, the console's logout)."""
        browser = AdminBrowser(self.backend.base_url, self.people.users[username].session_key)
        browser.csrf()  # before any timed change
        return browser

    def user_form(self, username: str, changes: dict[str, FormValue]) -> tuple[str, dict[str, list[str]]]:
        """The admin change form of a user, changed: ``(path, fields)``."""
        path = f"/admin/auth/user/{self.people.users[username].user_id}/change/"
        return path, self.admin.form(path, changes)

    def runtime_form(
        self, runtime_id: str, action: str, changes: dict[str, FormValue]
    ) -> tuple[str, dict[str, list[str]]]:
        """The admin change or delete form of a runtime row, changed: ``(path, fields)``."""
        path = f"/admin/runtimes/runtime/{self.people.runtime_pks[runtime_id]}/{action}/"
        return path, self.admin.form(path, changes)

    async def watch(self, runtime_id: str, username: str, name: str) -> WsClient:
        """A relaying socket of ``username`` on a new echo worker of ``runtime_id``."""
        return await watch_new_worker(
            self.backend, self.runtimes.get(runtime_id), runtime_id, self.people.users[username], name=name
        )

    def toml(self, *, without: str = "", disabled: str = "") -> str:
        """The module's runtimes file, optionally leaving one out or disabling one."""
        tables = []
        for entry in self.entries:
            if entry.runtime_id != without:
                tables.append(entry.toml() + ("enabled = false\n" if entry.runtime_id == disabled else ""))
        return "\n".join(tables)

    def sync(self, name: str, toml: str, *options: str) -> Callable[[], None]:
        """A change: ``sync_runtimes --file`` with ``toml``, in another process."""
        config = self.backend.log_path.parent / name
        config.write_text(toml, "utf-8")

        def run() -> None:
            result = self.backend.manage("sync_runtimes", "--file", str(config), *options)
            assert result.returncode == 0, result.stdout + result.stderr

        return run


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite: tuple[Path, str, str]) -> Iterator[Stage]:
    with module_site(tmp_path_factory, migrated_sqlite, "socket-policy") as (launcher, root):
        runtimes = {rid: start_runtime(root / rid, runtime_id=rid) for rid in REMOTE_IDS}
        entries: list[RuntimeEntry | EmbeddedEntry] = [RuntimeEntry.of(rt) for rt in runtimes.values()]
        entries += [EmbeddedEntry(rid) for rid in EMBEDDED_IDS]
        backend = launcher.start(runtimes=entries, env={"DJANGO_DEBUG": "1"})  # type: ignore[arg-type]
        yield Stage(backend, runtimes, entries, make_users(backend, USERS, RUNTIME_GROUPS))


def submitting(browser: AdminBrowser, form: tuple[str, dict[str, list[str]]]) -> Callable[[], object]:
    """A change: post a prepared admin form."""
    path, fields = form
    return lambda: browser.submit(path, fields)


# ------------------------------------------------------------------------------------------- sessions, users


async def test_logout_closes_the_sessions_sockets_4401(stage: Stage) -> None:
    clients = [await stage.watch("rt-open", "u-logout", f"logout-{i}") for i in range(2)]
    browser = stage.browser("u-logout")
    await expect_closed(clients, browser.logout, row="logout", code=4401, error="not_authenticated")


async def test_a_user_deactivated_in_the_admin_is_closed_4401(stage: Stage) -> None:
    clients = [await stage.watch("rt-open", "u-deactivate", "deactivated")]
    change = submitting(stage.admin, stage.user_form("u-deactivate", {"is_active": False}))
    await expect_closed(clients, change, row="user deactivated (admin)", code=4401, error="not_authenticated")


async def test_a_user_deleted_in_the_admin_is_closed_4401(stage: Stage) -> None:
    clients = [await stage.watch("rt-open", "u-delete", "deleted")]
    admin = stage.admin
    path = f"/admin/auth/user/{stage.people.users['u-delete'].user_id}/delete/"
    change = submitting(admin, (path, admin.form(path)))
    await expect_closed(clients, change, row="user deleted (admin)", code=4401, error="not_authenticated")


# ------------------------------------------------------------------------------------------- visibility


async def test_a_user_taken_out_of_the_runtimes_group_is_closed_4404(stage: Stage) -> None:
    clients = [await stage.watch("rt-team", "u-leaves", "leaves-group")]
    change = submitting(stage.admin, stage.user_form("u-leaves", {"groups": []}))
    await expect_closed(clients, change, row="group membership (admin)", code=4404, error="runtime_not_found")


async def test_a_runtime_whose_groups_change_closes_who_lost_it_4404(stage: Stage) -> None:
    clients = [await stage.watch("rt-regroup", "u-regroup", "regrouped")]
    ops = str(stage.people.group_pks["ops"])
    change = submitting(stage.admin, stage.runtime_form("rt-regroup", "change", {"groups": [ops]}))
    await expect_closed(clients, change, row="runtime's groups (admin)", code=4404, error="runtime_not_found")


# ------------------------------------------------------------------------------------------- runtimes


async def test_a_runtime_disabled_in_the_admin_closes_its_sockets_4503(stage: Stage) -> None:
    rt = stage.runtimes["rt-admin-off"]
    clients = [await stage.watch("rt-admin-off", name, f"admin-off-{name}") for name in ("u-runtimes", "operator")]
    await wait_streams_open(rt, lambda n: n == 2, timeout=15, what="one upstream per watched worker")
    change = submitting(stage.admin, stage.runtime_form("rt-admin-off", "change", {"enabled": False}))
    await expect_closed(clients, change, row="runtime disabled (admin)", code=4503, error="runtime_disabled")
    await wait_streams_open(rt, lambda n: n == 0, timeout=15, what="the upstreams closed")


async def test_a_runtime_disabled_by_sync_runtimes_closes_its_sockets_4503(stage: Stage) -> None:
    rt = stage.runtimes["rt-sync-off"]
    clients = [await stage.watch("rt-sync-off", "u-runtimes", "sync-off")]
    # Another process and no shared channel layer: this Backend's registry refresh sees the row change.
    change = stage.sync("disable.toml", stage.toml(disabled="rt-sync-off"))
    row, changed_at = "runtime disabled (sync_runtimes)", row_updated_at(stage.backend, "rt-sync-off")
    await expect_closed(clients, change, row=row, code=4503, error="runtime_disabled", changed_at=changed_at)
    await wait_streams_open(rt, lambda n: n == 0, timeout=15, what="the upstream closed")


async def test_a_runtime_pruned_by_sync_runtimes_closes_its_sockets_4503(stage: Stage) -> None:
    rt = stage.runtimes["rt-prune"]
    clients = [await stage.watch("rt-prune", "u-runtimes", "pruned")]
    change = stage.sync("prune.toml", stage.toml(without="rt-prune"), "--prune")
    row = "runtime pruned (sync_runtimes --prune)"
    changed_at = row_updated_at(stage.backend, "rt-prune")
    await expect_closed(clients, change, row=row, code=4503, error="runtime_disabled", changed_at=changed_at)
    await wait_streams_open(rt, lambda n: n == 0, timeout=15, what="the upstream closed")


async def test_a_runtime_deleted_in_the_admin_closes_its_sockets_4404(stage: Stage) -> None:
    rt = stage.runtimes["rt-deleted"]
    clients = [await stage.watch("rt-deleted", "u-runtimes", "runtime-deleted")]
    change = submitting(stage.admin, stage.runtime_form("rt-deleted", "delete", {}))
    await expect_closed(clients, change, row="runtime deleted (admin)", code=4404, error="runtime_not_found")
    await wait_streams_open(rt, lambda n: n == 0, timeout=15, what="the upstream closed")


async def test_sockets_of_others_are_untouched(stage: Stage) -> None:
    """After every change above, a socket nobody took anything from still relays."""
    worker_id = str((await asyncio.to_thread(create_worker, stage.runtimes["rt-open"]))["worker_id"])
    client = await watch(stage.backend, "rt-open", worker_id, stage.people.users["u-runtimes"], name="bystander")
    try:
        ack = await asyncio.to_thread(stage.backend.send_input, "rt-open", worker_id, "still here")
        await client.wait_for(lambda c: c.has_event("text_done", after_seq=int(ack["event_id"])), timeout=20)
        assert client.of_type("error") == [] and client.close_code is None
    finally:
        await client.close()
