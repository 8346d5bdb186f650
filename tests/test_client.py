"""The mail program from the IMAP ID Dovecot passes on as device_id, with IDs real programs send."""

from __future__ import annotations

import pytest

from policy_server.client import Client, parse_client_id

# What each program sends in its ID command, as Dovecot then passes it on (x-* fields dropped)
REAL_IDS = [
    (
        '"name" "Thunderbird" "version" "128.3.0"',
        Client("Thunderbird", "128.3.0"),
        "Thunderbird 128",
    ),
    (
        '"name" "iPhone Mail" "version" "21A329" "os" "iOS" "os-version" "17.0 (21A329)"',
        Client("iPhone Mail", "21A329", "iOS"),
        "iPhone Mail",
    ),
    (
        '"name" "Mac OS X Mail" "version" "16.0 (3731.700.6)" "os" "Mac OS X"'
        ' "os-version" "13.4 (22F66)" "vendor" "Apple Inc."',
        Client("Mac OS X Mail", "16.0 (3731.700.6)", "Mac OS X"),
        "Mac OS X Mail 16",
    ),
    (
        '"name" "Microsoft Outlook" "version" "16.0.17928"',
        Client("Microsoft Outlook", "16.0.17928"),
        "Microsoft Outlook 16",
    ),
    ('"name" "K-9 Mail" "version" "6.802"', Client("K-9 Mail", "6.802"), "K-9 Mail 6"),
    ('"name" "FairEmail" "version" "1.2211"', Client("FairEmail", "1.2211"), "FairEmail 1"),
    (
        '"name" "GImap" "vendor" "Google, Inc." "support-url" "https://support.google.com/mail"',
        Client("GImap"),
        "GImap",
    ),
    # a python imaplib script that sends its own ID; the ID command's parentheses kept
    ('("name" "imaplib" "version" "3.11.7")', Client("imaplib", "3.11.7"), "imaplib 3"),
    # Dovecot's own capture (2.3, imap_id_retain = yes)
    ('"name" "probe-client" "version" "1.0"', Client("probe-client", "1.0"), "probe-client 1"),
]


@pytest.mark.parametrize(("text", "client", "label"), REAL_IDS)
def test_real_programs_ids(text: str, client: Client, label: str) -> None:
    parsed = parse_client_id(text)
    assert parsed == client
    assert parsed is not None and parsed.label == label
    assert Client.from_payload(parsed.payload()) == Client(client.name, client.version)


@pytest.mark.parametrize(
    "text",
    [
        "",  # python imaplib without an ID, and every client that sends none
        "NIL",
        '"version" "1.0"',  # no name
        '"name" NIL "version" "1.0"',
        '"name" "unterminated',
        "garbage ( with ) parentheses",
    ],
)
def test_no_program_named(text: str) -> None:
    assert parse_client_id(text) is None


def test_escapes_atoms_case_and_bounds() -> None:
    assert parse_client_id(r'"name" "Say \"Hi\" Mail" "version" 2') == Client('Say "Hi" Mail', "2")
    assert parse_client_id('"NAME" "Upper" "Version" "3.1"') == Client("Upper", "3.1")
    # the first of a repeated field counts; control characters and runs of spaces go
    assert parse_client_id('"name" "A\x07  B" "name" "Other"') == Client("A B")
    long = parse_client_id('"name" "' + "x" * 500 + '"')
    assert long is not None and len(long.name) == 64
    assert Client.from_payload(None) is None
    assert Client.from_payload({"name": 3}) is None
    assert Client("Thunderbird").payload() == {"name": "Thunderbird", "version": None}
