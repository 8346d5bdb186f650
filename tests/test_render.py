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

from policy_server.client import Client
from policy_server.config import MessageConfig, WebConfig
from policy_server.delivery.render import Renderer, TemplateError, protocol_labels
from policy_server.model import Notice, Reason, Recipient, Travel
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


# The urgent reasons and the new mail program: wording, figures and the context behind them.

SMS_LIMITS = {
    # what a message may take in concatenated parts: Japanese is UCS-2 (67 a part), English
    # GSM-7 (153 a part); the ordinary notice with its link already takes 4 and 2
    "ja": 4 * 67,
    "en": 2 * 153,
}
SPREAD = ("?? unknown", "DE org:Hetzner Online", "JP AS2516", "US AS15169", "US AS64510")


def travel_notice(**changes: object) -> Notice:
    """A login in Brazil 2.46 hours after one in Japan, from a program never used before."""
    fields: dict[str, object] = {
        "reasons": (
            Reason.NEW_COUNTRY,
            Reason.NEW_PROVIDER,
            Reason.NEW_CLIENT,
            Reason.IMPOSSIBLE_TRAVEL,
        ),
        "country": "BR",
        "asn": 64520,
        "as_org": "Example Telecom",
        "client": Client("Thunderbird", "128.3.0"),
        "travel": Travel("JP", 17401.6, 2.46),
    }
    fields.update(changes)
    return make_notice(**fields)


def spread_notice(**changes: object) -> Notice:
    """A login from the US (AS64510) that makes five places within the hour."""
    fields: dict[str, object] = {
        "reasons": (Reason.NEW_PROVIDER, Reason.MANY_ORIGINS),
        "spread": SPREAD,
    }
    fields.update(changes)
    return make_notice(**fields)


@pytest.mark.parametrize(
    ("language", "line"),
    [
        (
            "ja",
            "これまでこのアカウントで使われたことのないメールソフト"
            "（Thunderbird 128）からのアクセスです。\n",
        ),
        ("en", "It came from a mail program this account has not used before: Thunderbird 128.\n"),
    ],
)
def test_new_client_names_the_program(notice: Notice, language: str, line: str) -> None:
    renderer = Renderer(config(language=language))
    new = replace(
        notice,
        reasons=(Reason.NEW_COUNTRY, Reason.NEW_CLIENT),
        client=Client("Thunderbird", "128.3.0"),
    )
    body = renderer.render(new).body
    # a hint after the usual first paragraph, before the details
    lead = {"ja": "以下の国・地域から", "en": "We detected access to your"}[language]
    assert body.index(lead) < body.index(line) < body.index("■")
    # the same login without new_client says nothing of it
    assert line not in renderer.render(replace(new, reasons=(Reason.NEW_COUNTRY,))).body
    # with a network's wording too
    vpn = replace(new, reasons=(Reason.VIA_VPN, Reason.NEW_CLIENT), network_label="Example VPN")
    assert line in renderer.render(vpn).body


def test_impossible_travel_in_japanese() -> None:
    message = Renderer(config(language="ja"), WEB).render(travel_notice())
    assert message.subject == "【Example Mail】至急：遠く離れた場所からの不審なログイン（ブラジル）"
    assert (
        "\n前回のログインから短時間のうちに、"
        "遠く離れた場所からExample Mailへのログインがありました。"
        "日本からブラジルまで約17,402kmを2.5時間で移動したことになります。"
        "この時間で移動できる距離ではないため、第三者がパスワードを使用しているおそれがあります。"
        "今すぐパスワードを変更してください。\n"
    ) in message.body
    assert (
        "■前回のログイン（推定）\n日本\n"
        "今回のログインとの距離：約17,402km\n今回のログインとの間隔：2.5時間\n"
    ) in message.body
    assert "メールソフト（Thunderbird 128）" in message.body
    # what to do: the "It wasn't me" link and the help page
    assert message.links is not None and f"\n{message.links.deny}\n" in message.body
    assert f"変更方法：{HELP_URL}\n" in message.body
    assert message.short.startswith(
        "【Example Mail】至急：2020/03/11 05:12:44（日本時間）、"
        "日本でのログインの2.5時間後に約17,402km離れたブラジルでログインがありました。"
        "不正利用のおそれがあります。今すぐパスワードを変更してください。\n"
    )
    assert f"：{message.links.page}\n" in message.short


def test_impossible_travel_in_english() -> None:
    message = Renderer(config(language="ja"), WEB).render(travel_notice(), Recipient(language="en"))
    assert message.subject == (
        "Urgent: login to Example Mail (IMAP) from Brazil, too far from the previous one"
    )
    assert (
        "\nA login to your Example Mail came from too far away for the time since the previous "
        "one: from Japan to Brazil, about 17,402 km in 2.5 hours. No one can travel that fast, "
        "so someone else may be using your password. Change your password now.\n"
    ) in message.body
    assert (
        "■ Previous login (estimated)\nJapan\nAbout 17,402 km away, 2.5 hours before this login\n"
    ) in message.body
    assert "a mail program this account has not used before: Thunderbird 128." in message.body
    assert message.links is not None and f"\n{message.links.deny}\n" in message.body
    assert f"How to change it: {HELP_URL}\n" in message.body
    assert message.short.startswith(
        "Example Mail URGENT: login from Brazil at 2020/03/11 05:12:44 (Japan Time), "
        "17,402 km from Japan in 2.5 hours. Change your password now.\n"
    )
    assert f"Was it you? Tell us: {message.links.page}\n" in message.short


@pytest.mark.parametrize(
    ("travel", "ja", "en"),
    [
        # under an hour: minutes
        (
            Travel("JP", 900.2, 0.4),
            (
                "日本からブラジルまで約900kmを24分で",
                "約900km離れたブラジル",
                "日本でのログインの24分後",
            ),
            ("from Japan to Brazil, about 900 km in 24 minutes", "900 km from Japan in 24 minutes"),
        ),
        (
            Travel("JP", 900, 1 / 60),
            ("約900kmを1分で", "日本でのログインの1分後"),
            ("about 900 km in 1 minute.", "900 km from Japan in 1 minute."),
        ),
        (
            Travel("JP", 900, 0.001),
            ("約900kmを1分未満で", "日本でのログインの直後"),
            ("about 900 km in less than a minute.", "in under a minute."),
        ),
        # just under an hour rounds to one hour, in hours
        (Travel("JP", 1500, 0.999), ("約1,500kmを1.0時間で",), ("about 1,500 km in 1.0 hours",)),
        # a long one
        (Travel("JP", 17401.6, 31.26), ("31.3時間",), ("31.3 hours",)),
        # the previous place unknown
        (
            Travel(None, 2000, 1.5),
            ("国・地域不明の場所からブラジルまで約2,000km", "国・地域不明の場所でのログイン"),
            ("from an unknown country/region to Brazil", "2,000 km from an unknown place"),
        ),
        # both in one country
        (
            Travel("BR", 2500, 1.2),
            ("ブラジル国内で約2,500kmを1.2時間で", "約2,500km離れた同じ国内の場所"),
            ("within Brazil, about 2,500 km in 1.2 hours", "2,500 km from Brazil"),
        ),
    ],
)
def test_journey_figures(travel: Travel, ja: tuple[str, ...], en: tuple[str, ...]) -> None:
    renderer = Renderer(config())
    notice = travel_notice(travel=travel)
    for language, expected in (("ja", ja), ("en", en)):
        message = renderer.render(notice, Recipient(language=language))
        text = message.body + message.short
        for words in expected:
            assert words in text, (language, words)


def test_impossible_travel_without_its_figures() -> None:
    # a notice that lost its journey still says what happened, without figures
    renderer = Renderer(config())
    notice = travel_notice(travel=None)
    ja = renderer.render(notice)
    assert "遠く離れた場所からExample Mailへのログインがありました。この時間で" in ja.body
    assert "■前回のログイン" not in ja.body
    assert "前回の場所から遠く離れたブラジルでログインがありました。" in ja.short
    en = renderer.render(notice, Recipient(language="en"))
    assert "for the time since the previous one. No one can travel" in en.body
    assert "Previous login" not in en.body
    assert "from Brazil at 2020/03/11 05:12:44 (Japan Time), too far from the previous" in en.short


def test_many_origins_in_japanese() -> None:
    message = Renderer(config(language="ja"), WEB).render(spread_notice())
    assert message.subject == "【Example Mail】至急：直近1時間に5か所からのログイン"
    assert (
        "\n直近1時間に、5か所（国・地域や通信事業者が異なる場所）からExample Mailへのログインが"
        "ありました。お一人でこれほど多くの場所から同時に利用することは考えにくいため、"
        "パスワードが第三者に知られ、迷惑メールの送信などに悪用されているおそれがあります。"
        "今すぐパスワードを変更してください。\n"
    ) in message.body
    assert (
        "■直近1時間にログインがあった場所（5か所）\n"
        "ドイツ：Hetzner Online\n"
        "日本：AS2516\n"
        "アメリカ合衆国：AS15169\n"
        "アメリカ合衆国：Example Hosting US AS64510（今回のログイン）\n"
        "国・地域不明：事業者不明\n"
    ) in message.body
    assert message.links is not None and f"\n{message.links.deny}\n" in message.body
    assert message.short.startswith(
        "【Example Mail】至急：2020/03/11 05:12:44（日本時間）"
        "までの1時間に5か所からログインがあり、"
        "不正利用のおそれがあります。今すぐパスワードを変更してください。\n"
    )


def test_many_origins_in_english() -> None:
    message = Renderer(config(language="en"), WEB).render(spread_notice())
    assert message.subject == "Urgent: logins to Example Mail from 5 places within the last hour"
    assert (
        "\nThere were logins to your Example Mail from 5 different places (countries or "
        "providers) within the last hour. No one uses their mail from that many places at once: "
        "your password is very likely known to others, who may be misusing your account, for "
        "example to send spam. Change your password at once.\n"
    ) in message.body
    assert (
        "■ Places used within the last hour (5)\n"
        "Germany, Hetzner Online\n"
        "Japan, AS2516\n"
        "United States, AS15169\n"
        "United States, Example Hosting US AS64510 (this login)\n"
        "Unknown country/region, unknown provider\n"
    ) in message.body
    assert message.short.startswith(
        "Example Mail URGENT: logins from 5 places in the hour up to 2020/03/11 05:12:44 "
        "(Japan Time). Someone likely has your password: change it now.\n"
    )
    assert HELP_URL in Renderer(config(language="en")).render(spread_notice()).short


def test_many_origins_says_so_first() -> None:
    # the most pressing wording leads: before a journey's or a network's
    both = spread_notice(
        reasons=(Reason.NEW_PROVIDER, Reason.IMPOSSIBLE_TRAVEL, Reason.MANY_ORIGINS),
        travel=Travel("JP", 10900, 1.5),
    )
    vpn = spread_notice(reasons=(Reason.VIA_VPN, Reason.MANY_ORIGINS), network="vpn")
    renderer = Renderer(config(language="en"))
    for notice in (both, vpn):
        message = renderer.render(notice)
        assert message.subject.startswith("Urgent: logins to Example Mail from 5 places")
        assert message.body.split("\n")[1].startswith("There were logins to your Example Mail")
        assert "■ Places used within the last hour (5)\n" in message.body
        assert message.short.startswith("Example Mail URGENT: logins from 5 places")
    # the journey is still shown
    assert "■ Previous login (estimated)\nJapan\nAbout 10,900 km away, 1.5 hours" in (
        renderer.render(both).body
    )


@pytest.mark.parametrize("language", ["ja", "en"])
@pytest.mark.parametrize("web", [None, WEB])
def test_urgent_sms_stay_short(language: str, web: WebConfig | None) -> None:
    renderer = Renderer(config(language=language), web)
    # a real notice id (a ULID) makes the links as long as they get
    for notice in (
        make_notice(),
        travel_notice(),
        travel_notice(country="US", travel=Travel("JP", 10900, 1.5)),
        spread_notice(),
    ):
        short = renderer.render(notice).short.strip()
        assert len(short) <= SMS_LIMITS[language], (len(short), short)
        assert short.count("https://") == 1


def test_the_new_context() -> None:
    renderer = Renderer(config())
    values = renderer.variables(travel_notice(), "ja")
    assert values["travel"] == {
        "from_country": "JP",
        "from_country_name": "日本",
        "km": "17,402",
        "hours": "2.5",
        "minutes": None,
    }
    assert values["spread"] == []
    en = renderer.variables(travel_notice(travel=Travel("us", 950.4, 0.25)), "en")
    assert en["travel"] == {
        "from_country": "US",
        "from_country_name": "United States",
        "km": "950",
        "hours": "0.2",
        "minutes": 15,
    }
    spread = renderer.variables(spread_notice(), "en")["spread"]
    assert spread[0] == {
        "country": "DE",
        "country_name": "Germany",
        "provider": "Hetzner Online",
        "current": False,
    }
    assert [p["current"] for p in spread] == [False, False, False, True, False]
    assert spread[-1] == {
        "country": None,
        "country_name": None,
        "provider": None,
        "current": False,
    }
    # the figures show only with their reason
    quiet = renderer.variables(travel_notice(reasons=(Reason.NEW_COUNTRY,), spread=SPREAD), "en")
    assert quiet["travel"] is None and quiet["spread"] == []


def test_other_reasons_show_no_journey_or_places(notice: Notice) -> None:
    renderer = Renderer(config())
    for language in ("ja", "en"):
        body = renderer.render(notice, Recipient(language=language)).body
        for words in ("■前回のログイン", "直近1時間", "Previous login", "Places used", "至急"):
            assert words not in body


def test_check_renders_the_journey_and_the_places(tmp_path: Path) -> None:
    # the sample notices carry a journey and places, so a wrong attribute is found at start
    write_template(tmp_path, "en", "{% if travel %}{{ travel.speed }}{% endif %}ok\n")
    with pytest.raises(TemplateError, match="speed"):
        Renderer(config(templates_dir=str(tmp_path)))
    write_template(tmp_path, "en", "{% for p in spread %}{{ p.asn }}{% endfor %}ok\n")
    with pytest.raises(TemplateError, match="asn"):
        Renderer(config(templates_dir=str(tmp_path)))
    write_template(
        tmp_path,
        "en",
        "{{ travel.km if travel else '-' }} {% for p in spread %}{{ p.country_name }} "
        "{{ p.provider }} {{ p.current }}{% endfor %}\n",
    )
    assert Renderer(config(templates_dir=str(tmp_path))).check() == []


@pytest.mark.parametrize(
    ("language", "window_s", "subject"),
    [
        ("ja", 1800.0, "【Example Mail】至急：直近30分に5か所からのログイン"),
        ("ja", 7200.0, "【Example Mail】至急：直近2時間に5か所からのログイン"),
        ("en", 1800.0, "Urgent: logins to Example Mail from 5 places within the last 30 minutes"),
        ("en", 7200.0, "Urgent: logins to Example Mail from 5 places within the last 2 hours"),
    ],
)
def test_many_origins_names_the_admins_window(language: str, window_s: float, subject: str) -> None:
    message = Renderer(config(language=language), WEB, window_s).render(spread_notice())
    assert message.subject == subject
