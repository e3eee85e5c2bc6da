"""The webhook's log lines never carry the URL's secrets (userinfo, path, query), whatever goes wrong."""

from __future__ import annotations

import socket

import pytest

from mlci import webhook

SECRET = "tok-9f8e7d"


def _closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{SECRET}@127.0.0.1:{_closed_port()}/hook",
        f"http://127.0.0.1:{_closed_port()}/hooks/{SECRET}?key={SECRET}",
        f"https://127.0.0.1:{_closed_port()}/{SECRET}",
    ],
)
def test_a_refused_webhook_says_scheme_and_host_only(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCI_HOOK", url)
    delivery = webhook.post("MLCI_HOOK", {"run_id": "r0001"})
    assert not delivery.sent
    assert delivery.message.startswith(f"POST to {url.split(':')[0]}://127.0.0.1 failed: ")
    assert SECRET not in delivery.message


def test_an_unset_or_non_http_variable_sends_nothing_and_never_echoes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLCI_HOOK", raising=False)
    assert webhook.post("MLCI_HOOK", {}).message == "$MLCI_HOOK is not set: no verdict sent"
    monkeypatch.setenv("MLCI_HOOK", f"ftp://{SECRET}@example.invalid/")
    delivery = webhook.post("MLCI_HOOK", {})
    assert not delivery.sent and SECRET not in delivery.message and "http(s)" in delivery.message
