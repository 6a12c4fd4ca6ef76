"""The event relay over mTLS: a browser socket watching a worker of a runtime that serves HTTPS and requires
the Backend's client certificate (certificates made by trustme); the stream uses the row's TLS settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User

from runtimes.models import Runtime
from tests.conftest import RuntimeFactory
from tests.runtime_process import wait_until as wait_until_sync
from tests.tls_certs import make_tls
from tests.workers.ws_helpers import (
    create_worker,
    events_path,
    has_seq,
    is_event,
    open_socket,
    runtime_handle,
    seqs,
    stop_worker,
    worker_settled,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("quick_relay")]

TOKEN_ENV = "YOI_RUNTIME_TOKEN_RELAY_TLS"


async def test_a_browser_watches_a_worker_of_an_mtls_runtime(
    user: User,
    runtime_factory: RuntimeFactory,
    tmp_path: Path,
    secrets_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tls = make_tls(tmp_path / "tls", key_dir=secrets_dir)
    rt = runtime_factory(
        runtime_id="rt-tls", extra_args=("--ping-interval", "0.5", "--access-log", *tls.runtime_args(mtls=True))
    )
    assert rt.token is not None
    monkeypatch.setenv(TOKEN_ENV, rt.token)
    await Runtime.objects.acreate(
        runtime_id="rt-tls",
        display_name="mTLS runtime",
        kind=Runtime.Kind.REMOTE,
        base_url=rt.base_url,
        token_ref=f"env:{TOKEN_ENV}",
        tls_ca_file=str(tls.ca_file),
        tls_client_cert_file=str(tls.client_cert),
        tls_client_key_ref=f"file:{tls.client_key}",
    )
    handle = await runtime_handle("rt-tls")
    await create_worker(handle, "w-tls")
    await worker_settled(handle, "w-tls", transcript_len=2)
    socket_ = await open_socket(events_path("rt-tls", "w-tls", "after=0"), user=user)
    try:
        assert socket_.accepted
        await socket_.read_until(has_seq(7))
        await stop_worker(handle, "w-tls")
        await socket_.read_until(is_event("worker_exited"))
    finally:
        await socket_.disconnect()
    events = socket_.events()
    assert seqs(events) == list(range(1, len(events) + 1))
    assert events[6]["event"] == "text_done" and events[6]["data"]["text"] == "echo: hi"
    for text in socket_.texts:
        assert rt.base_url not in text and f"127.0.0.1:{rt.port}" not in text and rt.token not in text
    # The stream went over the same TLS connection settings (the runtime logged it).
    wait_until_sync(
        lambda: ("GET", "/v1/workers/w-tls/events", 200) in rt.requests_logged(),
        timeout=10,
        message="the event stream in the runtime's log",
    )
