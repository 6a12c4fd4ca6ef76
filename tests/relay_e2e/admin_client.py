"""An operator's browser on a real Backend: Django admin forms and the console's logout, over plain HTTP.

``AdminBrowser`` holds a session cookie and submits admin forms the way a browser would: ``form`` reads a
form's current fields (inputs, checkboxes, selects, textareas) and applies the changes asked for,
``submit`` posts them back with the CSRF token (apart, so that a test can time the change alone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser

import requests

HTTP_TIMEOUT = (5, 30)
FormValue = str | Sequence[str] | bool


class _FormFields(HTMLParser):
    """The submittable fields of the page's ``<form id=..._form>`` (the admin's change / delete form)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, list[str]] = {}
        self._select: str | None = None
        self._textarea: str | None = None
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        if tag == "form" and a.get("method", "").lower() == "post":
            self._in_form = True
        if not self._in_form:
            return
        name = a.get("name")
        if tag == "input" and name:
            kind = a.get("type", "text").lower()
            if kind in {"checkbox", "radio"}:
                if "checked" in a:
                    self.fields.setdefault(name, []).append(a.get("value") or "on")
                else:
                    self.fields.setdefault(name, [])
            elif kind not in {"submit", "button", "file", "image"}:
                self.fields.setdefault(name, []).append(a.get("value", ""))
        elif tag == "select" and name:
            self._select = name
            self.fields.setdefault(name, [])
        elif tag == "option" and self._select is not None and "selected" in a:
            self.fields[self._select].append(a.get("value", ""))
        elif tag == "textarea" and name:
            self._textarea = name
            self.fields[name] = [""]

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None
        elif tag == "form":
            self._in_form = False

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self.fields[self._textarea][0] += data


@dataclass
class AdminBrowser:
    """A logged-in browser session on ``base_url`` (session cookie ``session_key``)."""

    base_url: str
    session_key: str
    http: requests.Session = field(default_factory=requests.Session, repr=False)

    def __post_init__(self) -> None:
        self.http.cookies.set("sessionid", self.session_key)

    def csrf(self) -> str:
        """The CSRF token (the cookie; fetched from the admin the first time)."""
        token = self.http.cookies.get("csrftoken")
        if token is None:
            self.http.get(f"{self.base_url}/admin/", timeout=HTTP_TIMEOUT)
            token = self.http.cookies.get("csrftoken")
        assert token, "no CSRF cookie from the Backend"
        return str(token)

    def form(self, path: str, changes: Mapping[str, FormValue] | None = None) -> dict[str, list[str]]:
        """The fields of the admin form at ``path`` as a browser would submit them, with ``changes`` (a
        checkbox as a bool, a multiple select as a list)."""
        response = self.http.get(f"{self.base_url}{path}", timeout=HTTP_TIMEOUT, allow_redirects=False)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:500]}"
        parser = _FormFields()
        parser.feed(response.text)
        fields = parser.fields
        for name, value in (changes or {}).items():
            if isinstance(value, bool):
                fields[name] = ["on"] if value else []
            elif isinstance(value, str):
                fields[name] = [value]
            else:
                fields[name] = list(value)
        fields["csrfmiddlewaretoken"] = [self.csrf()]
        return fields

    def submit(self, path: str, fields: Mapping[str, Sequence[str]]) -> requests.Response:
        """Post a form got with ``form``; the admin answers a redirect on success."""
        response = self.post(path, fields)
        assert response.status_code == 302, f"POST {path}: {response.status_code} {response.text[:2000]}"
        return response

    def post(self, path: str, data: Mapping[str, Sequence[str]]) -> requests.Response:
        """A form POST with the CSRF header (no redirects followed)."""
        return self.http.post(
            f"{self.base_url}{path}",
            data=[(name, value) for name, values in data.items() for value in values],
            headers={"X-CSRFToken": self.csrf(), "Referer": f"{self.base_url}{path}"},
            timeout=HTTP_TIMEOUT,
            allow_redirects=False,
        )

    def logout(self) -> requests.Response:
        """The console's logout (POST /logout/)."""
        response = self.post("/logout/", {"csrfmiddlewaretoken": [self.csrf()]})
        assert response.status_code == 302, f"logout: {response.status_code}"
        return response
