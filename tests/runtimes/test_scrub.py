"""The one scrub (runtimes/scrub.py): metadata loses addresses, paths, tracebacks and secrets in every form;
agent content loses known secrets only; the hot path leaves untouched payloads untouched."""

from __future__ import annotations

import pytest

from runtimes.scrub import REDACTED, KnownSecrets, Scrubber, scrub

TOKEN = "tok-scrub-test-6a1f0c9e"
KEY = "dev-secret-key-for-scrub-tests-123"
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgdG9rLXNjcnViLXRl\n"
    "c3QtNmExZjBjOWUtcGFkZGluZy1wYWRkaW5nLXBhZGRpbmctcGFkZGluZy0xMjM0\n"
    "-----END PRIVATE KEY-----\n"
)


def secrets_of(*values: str) -> KnownSecrets:
    return KnownSecrets(static_source=lambda: values)


@pytest.fixture
def v4() -> Scrubber:
    return Scrubber(base_url="http://10.20.30.40:38800/prefix", secrets=secrets_of(TOKEN, KEY, PEM))


@pytest.mark.parametrize(
    "text",
    [
        "see http://10.20.30.40:38800/prefix/v1/x",
        "peer 10.20.30.40:38800 refused",
        "peer 10.20.30.40 refused",
        "peer 10.20.30.40%3A38800 refused",
        "peer 10.20.30.40%253A38800 refused",
        "other box secret-host.internal:8443",
        "localhost:5432 is the database",
        "[fd00::1]:443 answered",
        "loaded /srv/yoi/runtime/config.toml",
        "loaded %2Fsrv%2Fyoi%2Fsecret.json",
        'Traceback (most recent call last):\n  File "/srv/app.py", line 10, in run\nValueError: x',
        'at File "app.py", line 3',
        f"credential {TOKEN}",
        f"django {KEY}",
        f"key line {PEM.splitlines()[1]}",
    ],
)
def test_metadata_loses_what_it_must(v4: Scrubber, text: str) -> None:
    scrubbed = v4.text(text)
    for leaked in (
        "10.20.30.40",
        "38800",
        "secret-host.internal",
        "localhost:5432",
        "fd00::1",
        "/srv",
        "%2Fsrv",
        "app.py",
        "Traceback (most",
        TOKEN,
        KEY,
        PEM.splitlines()[1],
    ):
        assert leaked not in scrubbed, (text, scrubbed)


def test_metadata_keeps_ordinary_text(v4: Scrubber) -> None:
    for text in ("builtin:echo", "example-agent", "running", "Build host 1", "v1.2 ready", "ratio 3:2"):
        assert v4.text(text) == text


def test_ipv6_runtime_addresses_in_any_form() -> None:
    scrubber = Scrubber(base_url="https://[fd00::7]:8443", secrets=secrets_of())
    for text in ("at [fd00::7]:8443", "at [FD00::7]", "host fd00::7 down", "at %5Bfd00%3A%3A7%5D%3A8443"):
        assert "fd00" not in scrubber.text(text).lower(), text


def test_the_default_port_counts_as_the_runtimes_address() -> None:
    scrubber = Scrubber(base_url="https://runtime.example.internal", secrets=secrets_of())
    assert "runtime.example.internal" not in scrubber.text(
        "at runtime.example.internal:443 and RUNTIME.EXAMPLE.INTERNAL"
    )


def test_error_messages_are_capped_and_one_line() -> None:
    assert scrub("a\nb\x00c" + "x" * 500) == ("a b c" + "x" * 500)[:200]


def test_agent_content_keeps_urls_and_paths_and_loses_secrets(v4: Scrubber) -> None:
    text = f"fetch http://10.20.30.40:38800/x into /srv/out with {TOKEN} and {KEY}"
    assert v4.content(text) == f"fetch http://10.20.30.40:38800/x into /srv/out with {REDACTED} and {REDACTED}"


def test_content_tree_redacts_keys_and_nested_values_and_shares_what_it_did_not_change(v4: Scrubber) -> None:
    untouched = {"text": "nothing secret here", "items": [{"a": 1}, "x"]}
    assert v4.content_tree(untouched) is untouched
    payload = {"ok": {"n": 1}, TOKEN: [1, {"deep": f"x{KEY}y"}], "list": ["plain"]}
    result = v4.content_tree(payload)
    assert result == {"ok": {"n": 1}, REDACTED: [1, {"deep": f"x{REDACTED}y"}], "list": ["plain"]}
    assert result["ok"] is payload["ok"] and result["list"] is payload["list"]


def test_a_secret_that_json_escapes_is_found_too() -> None:
    quoted = 'tok"with\\escapes-0001'
    scrubber = Scrubber(secrets=secrets_of(quoted))
    assert scrubber.content_tree({"text": f"a {quoted} b"}) == {"text": f"a {REDACTED} b"}


def test_short_values_are_not_secrets_and_longest_go_first() -> None:
    known = secrets_of("short", "abcdefgh", "abcdefgh-longer")
    assert known.values() == ("abcdefgh-longer", "abcdefgh")
    assert known.redact("x abcdefgh-longer short") == f"x {REDACTED} short"


def test_values_resolved_later_are_added_and_reset_forgets() -> None:
    known = secrets_of()
    assert known.redact(TOKEN) == TOKEN
    known.add(TOKEN)
    assert known.redact(TOKEN) == REDACTED
    known.reset()
    assert known.redact(TOKEN) == TOKEN
    assert "tok-" not in repr(known)


def test_the_backends_own_secrets_are_known(settings: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.conf import settings as django_settings

    monkeypatch.setenv("YOI_RUNTIME_TOKEN_SCRUB_TEST", TOKEN)
    monkeypatch.setenv("DATABASE_URL", "postgres://yoi:db-password-7731@127.0.0.1/yoi")
    known = KnownSecrets()
    text = f"{django_settings.SECRET_KEY} {TOKEN} db-password-7731"
    assert known.redact(text) == f"{REDACTED} {REDACTED} {REDACTED}"
