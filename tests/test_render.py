"""Rendering notices: the SMS layout in Japanese and English, time zones, override dirs."""

# Japanese text uses full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr
from support import make_notice

from policy_server.config import MessageConfig, WebConfig
from policy_server.delivery.render import Renderer, TemplateError, protocol_labels
from policy_server.model import Notice, Reason, Recipient
from policy_server.web.tokens import read_token

HELP_URL = "https://mail.example.jp/help/password"


@pytest.fixture
def notice() -> Notice:
    return make_notice(
        id="n-1",
        login="taro@example.jp",
        reasons=(Reason.NEW_COUNTRY,),
        remote="203.0.113.7",
        country="JP",
        asn=64500,
        as_org="Example Networks",
        prefix="203.0.113.0/24",
    )


def config(**overrides: str) -> MessageConfig:
    return MessageConfig(service_name="Example Mail", help_url=HELP_URL, **overrides)


def write_template(root: Path, language: str, text: str) -> None:
    (root / language).mkdir(parents=True, exist_ok=True)
    (root / language / "notice.txt").write_text(text, encoding="utf-8")


def test_japanese_notice(notice: Notice) -> None:
    text = Renderer(config(language="ja")).render(notice).body
    assert text.startswith("【Example Mailへのアクセスのお知らせ】\n")
    assert "Example Mail（IMAP）" in text
    assert "2020/03/11 05:12:44（日本時間）" in text
    assert "■国・地域（推定）\n日本\n" in text
    assert f"変更方法：{HELP_URL}\n" in text
    assert text.endswith("\n")


def test_english_notice(notice: Notice) -> None:
    text = Renderer(config(language="ja")).render(notice, Recipient(language="en")).body
    assert text.startswith("【Access to Example Mail】\n")
    assert "Example Mail (IMAP)" in text
    assert "2020/03/11 05:12:44 (Japan Time)" in text
    assert "■ Country/region (estimated)\nJapan\n" in text
    assert f"How to change it: {HELP_URL}\n" in text


def test_unknown_country_is_said_plainly(notice: Notice) -> None:
    unknown = replace(notice, country=None, asn=None, as_org=None)
    renderer = Renderer(config())
    assert "■国・地域（推定）\n不明\n" in renderer.render(unknown, Recipient(language="ja")).body
    assert (
        "■ Country/region (estimated)\nUnknown\n"
        in renderer.render(unknown, Recipient(language="en")).body
    )


def test_country_code_babel_does_not_know_is_unknown(notice: Notice) -> None:
    text = Renderer(config()).render(replace(notice, country="XX"), Recipient(language="en")).body
    assert "(estimated)\nUnknown\n" in text


@pytest.mark.parametrize(
    ("protocol", "label"),
    [
        ("submission", "SMTP"),
        ("smtp", "SMTP"),
        ("sieve", "ManageSieve"),
        ("pop3", "POP3"),
        ("lmtp", "LMTP"),
        ("doveadm", "DOVEADM"),
    ],
)
def test_protocol_labels(notice: Notice, protocol: str, label: str) -> None:
    text = (
        Renderer(config()).render(replace(notice, protocol=protocol), Recipient(language="en")).body
    )
    assert f"Example Mail ({label})" in text


def test_several_protocols_are_joined_once_each() -> None:
    assert protocol_labels(["smtp", "imap", "submission"]) == "SMTP/IMAP"


def test_time_zone_setting_changes_time_and_label(notice: Notice) -> None:
    text = Renderer(config(timezone="Europe/Berlin")).render(notice, Recipient(language="en")).body
    assert "2020/03/10 21:12:44 (Germany (Berlin) Time)" in text
    assert "05:12:44" not in text


@pytest.mark.parametrize(
    ("zone", "language", "expected"),
    [
        ("UTC", "en", "2020/03/10 20:12:44 (Coordinated Universal Time)"),
        ("UTC", "ja", "2020/03/10 20:12:44（協定世界時）"),
        ("Etc/GMT-9", "en", "2020/03/11 05:12:44 (GMT+09:00)"),
        ("Japan", "en", "2020/03/11 05:12:44 (Japan Time)"),
    ],
)
def test_zones_without_a_place_are_named_not_unknown(
    notice: Notice, zone: str, language: str, expected: str
) -> None:
    text = Renderer(config(timezone=zone)).render(notice, Recipient(language=language)).body
    assert expected in text
    assert "Unknown Region" not in text
    assert "不明な地域" not in text


def test_language_fallback(notice: Notice) -> None:
    renderer = Renderer(config(language="ja"))
    assert renderer.render(notice, Recipient(language="en-US")).body.startswith("【Access to")
    assert renderer.render(notice, Recipient(language="fr")).body.startswith("【Example Mailへの")
    assert renderer.render(notice).body.startswith("【Example Mailへの")
    assert (
        Renderer(config(language="en"))
        .render(notice, Recipient(language="fr"))
        .body.startswith("【Access to")
    )


def test_shipped_templates_pass_check() -> None:
    renderer = Renderer(config())
    assert renderer.languages == ["en", "ja"]
    assert renderer.check() == []


def test_override_dir_adds_a_language(tmp_path: Path, notice: Notice) -> None:
    write_template(
        tmp_path,
        "de",
        "Zugriff auf {{ service_name }} ({{ protocols }})\n"
        "{{ time }} ({{ tz_label }})\n"
        "Land: {{ country_name or 'unbekannt' }}\n",
    )
    renderer = Renderer(config(templates_dir=str(tmp_path)))
    assert renderer.languages == ["de", "en", "ja"]
    assert renderer.check() == []
    text = renderer.render(replace(notice, country="DE"), Recipient(language="de")).body
    assert text == (
        "Zugriff auf Example Mail (IMAP)\n"
        "2020/03/11 05:12:44 (Japan (Ortszeit))\n"
        "Land: Deutschland\n"
    )
    # the shipped languages stay available beside the added one
    assert renderer.render(notice, Recipient(language="en")).body.startswith("【Access to")


def test_override_dir_replaces_a_shipped_language(tmp_path: Path, notice: Notice) -> None:
    write_template(tmp_path, "en", "{{ login }} from {{ country }} ({{ reasons|join(',') }})\n")
    text = (
        Renderer(config(templates_dir=str(tmp_path))).render(notice, Recipient(language="en")).body
    )
    assert text == "taro@example.jp from JP (new_country)\n"


def test_undefined_variable_in_override_is_refused_at_construction(tmp_path: Path) -> None:
    write_template(tmp_path, "en", "Hello {{ customer_name }}\n")
    with pytest.raises(TemplateError) as info:
        Renderer(config(templates_dir=str(tmp_path)))
    assert "customer_name" in str(info.value)
    assert str(tmp_path / "en" / "notice.txt") in str(info.value)


def test_undefined_variable_in_untaken_branch_is_found(tmp_path: Path) -> None:
    write_template(tmp_path, "en", "{% if asn == 1 %}{{ asn_name }}{% endif %}ok\n")
    with pytest.raises(TemplateError, match="asn_name"):
        Renderer(config(templates_dir=str(tmp_path)))


def test_undefined_attribute_is_found_by_trial_render(tmp_path: Path) -> None:
    write_template(tmp_path, "en", "{{ login.domain }}\n")
    with pytest.raises(TemplateError, match="domain"):
        Renderer(config(templates_dir=str(tmp_path)))


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write_template(tmp_path, "ja", "ok\n{% if country %}\nno endif\n")
    with pytest.raises(TemplateError) as info:
        Renderer(config(templates_dir=str(tmp_path)))
    assert "ja/notice.txt" in str(info.value)
    assert "syntax error" in str(info.value)


def test_missing_templates_dir(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="not a directory"):
        Renderer(config(templates_dir=str(tmp_path / "absent")))


def test_configured_language_without_template(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="'fr'"):
        Renderer(config(language="fr"))
    write_template(tmp_path, "fr", "Accès à {{ service_name }}\n")
    assert Renderer(config(language="fr", templates_dir=str(tmp_path))).default_language == "fr"


def test_conf_templates_are_the_shipped_ones() -> None:
    # conf/templates is where admins start overriding; it must not drift from what ships
    root = Path(__file__).resolve().parent.parent
    shipped = root / "policy_server" / "delivery" / "templates"
    copies = root / "conf" / "templates"
    names = sorted(p.relative_to(shipped) for p in shipped.rglob("*.txt"))
    assert names == sorted(p.relative_to(copies) for p in copies.rglob("*.txt"))
    assert len(names) == 6
    for name in names:
        assert (copies / name).read_bytes() == (shipped / name).read_bytes(), name


def test_subject_and_sms_text(notice: Notice) -> None:
    renderer = Renderer(config(language="ja"))
    both = replace(notice, protocols=("imap", "smtp"))
    ja = renderer.render(both)
    assert ja.language == "ja"
    assert ja.subject == "【Example Mail】アクセスのお知らせ（日本）"
    assert ja.short.startswith("【Example Mail】2020/03/11 05:12:44（日本時間）に日本から")
    assert "IMAP/SMTPでアクセス" in ja.short
    assert HELP_URL in ja.short
    assert len(ja.short) < len(ja.body) < 400
    en = renderer.render(both, Recipient(language="en"))
    assert en.subject == "Access to Example Mail (IMAP/SMTP) from Japan"
    assert "\n" not in en.subject
    assert en.body.count("Example Mail (IMAP/SMTP)") == 1


def test_recipient_time_zone_and_language(notice: Notice) -> None:
    renderer = Renderer(config(language="ja", timezone="Asia/Tokyo"))
    text = renderer.render(notice, Recipient("a@example.jp", "en", "Europe/Paris")).body
    assert "2020/03/10 21:12:44 (France Time)" in text
    # an unknown zone in a contact falls back to the configured one
    text = renderer.render(notice, Recipient("a@example.jp", "en", "Mars/Base")).body
    assert "2020/03/11 05:12:44 (Japan Time)" in text


def test_folded_notices_are_listed_oldest_first(notice: Notice) -> None:
    older = [
        replace(notice, id="a", time=datetime(2020, 3, 10, 19, 0, tzinfo=UTC), country="US"),
        replace(
            notice,
            id="b",
            time=datetime(2020, 3, 10, 18, 0, tzinfo=UTC),
            country=None,
            protocol="pop3",
        ),
    ]
    renderer = Renderer(config(language="en"))
    message = renderer.render(notice, folded=older)
    assert (
        "■ Earlier accesses from new places (held back, not notified before)\n"
        "2020/03/11 03:00:00 Unknown (POP3)\n"
        "2020/03/11 04:00:00 United States (IMAP)\n"
    ) in message.body
    assert "and 2 earlier" in message.short
    assert "Earlier" not in renderer.render(notice).body
    ja = Renderer(config(language="ja")).render(notice, folded=older)
    assert "2020/03/11 04:00:00 アメリカ合衆国（IMAP）" in ja.body
    assert "（ほか2件）" in ja.short


def test_the_message_carries_the_folded_notices_oldest_first(notice: Notice) -> None:
    # what a channel needs to name them itself (the webhook's "earlier")
    older = [
        replace(notice, id="a", time=datetime(2020, 3, 10, 19, 0, tzinfo=UTC)),
        replace(notice, id="b", time=datetime(2020, 3, 10, 18, 0, tzinfo=UTC)),
    ]
    renderer = Renderer(config(language="en"))
    assert [n.id for n in renderer.render(notice, folded=older).folded] == ["b", "a"]
    assert renderer.render(notice).folded == ()


def test_a_language_with_only_a_body_template(tmp_path: Path, notice: Notice) -> None:
    write_template(tmp_path, "de", "Zugriff auf {{ service_name }}\nLand: {{ country_name }}\n")
    message = Renderer(config(templates_dir=str(tmp_path))).render(notice, Recipient(language="de"))
    # without subject.txt and sms.txt: the first line is the subject, the body is the SMS
    assert message.subject == "Zugriff auf Example Mail"
    assert message.short == message.body == "Zugriff auf Example Mail\nLand: Japan\n"
    assert message.language == "de"


def test_unknown_variable_in_an_sms_template_is_refused(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "sms.txt").write_text("{{ phone_number }}\n", encoding="utf-8")
    with pytest.raises(TemplateError) as info:
        Renderer(config(templates_dir=str(tmp_path)))
    assert "phone_number" in str(info.value)
    assert str(tmp_path / "en" / "sms.txt") in str(info.value)


def test_check_config_reports_a_broken_template(tmp_path: Path) -> None:
    from policy_server.commands.main import main

    write_template(tmp_path / "t", "en", "{{ customer }}\n")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[message]\ntemplates_dir = "{tmp_path / "t"}"\n', encoding="utf-8")
    assert main(["check-config", "-c", str(conf)]) == 1


LINKS_SECRET = "an-hmac-key-for-the-links-0123456789"
WEB = WebConfig(public_url="https://mail.example.com/notice", secret=SecretStr(LINKS_SECRET))


def link_tokens(text: str) -> dict[str, str]:
    """action -> token of each owner's link in ``text``."""
    found = re.findall(r"https://mail\.example\.com/notice/(confirm|deny|page)\?t=([\w-]+)", text)
    return dict(found)


@pytest.mark.parametrize("language", ["ja", "en"])
def test_owner_links_in_every_message(notice: Notice, language: str) -> None:
    message = Renderer(config(language=language), WEB).render(notice)
    # e-mail body (also the webhook's message): both answers, each on a line of its own
    body = link_tokens(message.body)
    assert set(body) == {"confirm", "deny"}
    for action, token in body.items():
        assert f"\n{message.links and getattr(message.links, action)}\n" in message.body
        read = read_token(LINKS_SECRET, token, notice.time.timestamp(), action=action)
        assert (read.notice_id, read.account) == (notice.id, notice.account)
    explanation = {
        "en": ("If this was you", "block further logins from that network for your account"),
        "ja": ("ご本人の場合は", "ログインを以後ブロックします"),
    }[language]
    assert all(words in message.body for words in explanation)
    # the SMS: one short link to the page with both buttons
    assert set(link_tokens(message.short)) == {"page"}
    assert message.short.count("https://") == 1
    assert message.links is not None and message.links.page in message.short
    assert link_tokens(message.subject) == {}


@pytest.mark.parametrize("language", ["ja", "en"])
def test_no_links_when_off(notice: Notice, language: str) -> None:
    for web in (None, WebConfig()):
        message = Renderer(config(language=language), web).render(notice)
        assert message.links is None
        for text in (message.body, message.short, message.subject):
            assert "mail.example.com/notice" not in text and "?t=" not in text
            assert "\n\n\n" not in text and not text.startswith("\n")
        assert "Was this you" not in message.body and "ご本人によるアクセス" not in message.body
        # the SMS keeps today's advice instead
        assert HELP_URL in message.short


def test_links_off_render_as_without_the_links_section(notice: Notice) -> None:
    for language in ("ja", "en"):
        off = Renderer(config(language=language)).render(notice).body
        on = Renderer(config(language=language), WEB).render(notice).body
        start = on.index("■ Was this you?" if language == "en" else "■ご本人によるアクセスですか？")
        end = on.index("\n\n", start) + 1
        assert on[: start - 1] + on[end:] == off


def test_templates_see_the_links_and_check_renders_them(tmp_path: Path, notice: Notice) -> None:
    write_template(tmp_path, "de", "Ja: {{ confirm_url }}\nNein: {{ deny_url }}\n{{ page_url }}\n")
    renderer = Renderer(config(templates_dir=str(tmp_path)), WEB)
    assert renderer.check() == []
    text = renderer.render(notice, Recipient(language="de")).body
    assert set(link_tokens(text)) == {"confirm", "deny", "page"}
    assert (
        Renderer(config(templates_dir=str(tmp_path))).render(notice, Recipient(language="de")).body
        == "Ja: \nNein: \n\n"
    )


def test_check_config_accepts_links(tmp_path: Path) -> None:
    from policy_server.commands.main import main

    conf = tmp_path / "c.toml"
    conf.write_text(
        f'[web]\npublic_url = "https://mail.example.com/notice"\nsecret = "{LINKS_SECRET}"\n',
        encoding="utf-8",
    )
    assert main(["check-config", "-c", str(conf)]) == 0
