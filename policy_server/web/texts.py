"""The owner's pages' words, by language. A language without an entry here gets English."""

# ruff: noqa: RUF001 (Japanese text uses full-width punctuation)

from __future__ import annotations

from typing import Final

TEXTS: Final[dict[str, dict[str, str]]] = {
    "en": {
        "title": "Was this you?",
        "intro": "We noticed this access to your {service} account. Tell us whether it was you.",
        "when": "Time",
        "service": "Service",
        "country": "Country/region (estimated)",
        "provider": "Network provider",
        "program": "Mail program",
        "unknown": "Unknown",
        "recent": "Accesses in the last 30 days",
        "recent_none": "No other accesses in the last 30 days.",
        "logins": "Logins",
        "last": "Last access",
        "this_one": "this access",
        "confirm_button": "Yes, it was me",
        "deny_button": "No, it wasn't me: block this network",
        "deny_explain": (
            "If it was not you, we refuse further logins to your account from this network"
            " ({what}) for {days} days. You can still log in from your usual places."
        ),
        "no_password": (
            "This page never asks for your password. If a page that looks like this one asks"
            " for it, do not enter it."
        ),
        "answered_confirmed": "You told us on {when} that this access was you.",
        "answered_denied": "You told us on {when} that this access was not you.",
        "blocked_until": "Logins to your account from this network are refused until {until}.",
        "done_confirmed": "Thank you. This access is now recorded as yours.",
        "done_denied": "Thank you. Logins to your account from this network are refused.",
        "change_password": ("Someone else may know your password. Change it now: {help_url}"),
        "refused_title": "This link cannot be used",
        "refused_expired": ("This link has expired. Links in a notice work for {days} days."),
        "refused_invalid": (
            "This link is not valid. Open the link from your notice again, without changing it."
        ),
        "refused_gone": "This notice is no longer kept, so it cannot be answered here.",
        "refused_form": (
            "Your answer could not be accepted. Open the link from your notice again and press"
            " the button once more (cookies must be allowed for this page)."
        ),
        "unavailable": "This page is not available right now. Please try again in a few minutes.",
        "network_provider": "{provider} in {country}",
        "network_prefix": "the network {prefix}",
        "help": "If you are unsure what to do, see {help_url}",
        "settings": "Your notice settings",
        "notices_on_state": "Notices about unusual logins are on.",
        "notices_off_state": "Notices about unusual logins are off.",
        "notices_off_button": "Turn notices off",
        "notices_on_button": "Turn notices on",
        "trip_state": (
            "Trip declared: {country} until {until}. New logins from there send no notice."
        ),
        "trip_none": "No trip declared.",
        "trip_country": "Country (2 letters, e.g. FR)",
        "trip_until": "Last day",
        "trip_button": "Declare a trip",
        "trip_end_button": "End the trip",
        "saved": "Your settings are saved.",
        "setting_bad": (
            "The country must be a two-letter country code (FR; GB for the United Kingdom)"
            " and the last day a date from today on."
        ),
    },
    "ja": {
        "title": "このアクセスはご本人ですか？",
        "intro": (
            "{service}のアカウントへの次のアクセスを検知しました。"
            "ご本人によるものか教えてください。"
        ),
        "when": "日時",
        "service": "サービス",
        "country": "国・地域（推定）",
        "provider": "接続元のプロバイダ",
        "program": "メールソフト",
        "unknown": "不明",
        "recent": "過去30日間のアクセス",
        "recent_none": "過去30日間にほかのアクセスはありません。",
        "logins": "ログイン回数",
        "last": "最終アクセス",
        "this_one": "今回のアクセス",
        "confirm_button": "はい、本人です",
        "deny_button": "いいえ、本人ではありません（このネットワークを遮断）",
        "deny_explain": (
            "ご本人でない場合、このネットワーク（{what}）からのお客様のアカウントへのログインを"
            "{days}日間拒否します。いつもの場所からは引き続きログインできます。"
        ),
        "no_password": (
            "このページでパスワードをお尋ねすることはありません。"
            "このページに似た画面でパスワードを求められても入力しないでください。"
        ),
        "answered_confirmed": "{when}に、このアクセスはご本人によるものとご回答いただきました。",
        "answered_denied": "{when}に、このアクセスはご本人ではないとご回答いただきました。",
        "blocked_until": "このネットワークからのログインは{until}まで拒否されます。",
        "done_confirmed": (
            "ご回答ありがとうございます。このアクセスはご本人によるものとして記録しました。"
        ),
        "done_denied": (
            "ご回答ありがとうございます。このネットワークからのお客様のアカウントへのログインを"
            "拒否します。"
        ),
        "change_password": (
            "第三者がパスワードを知っている可能性があります。今すぐパスワードを変更してください："
            "{help_url}"
        ),
        "refused_title": "このリンクは使用できません",
        "refused_expired": "このリンクは有効期限が切れています。通知のリンクは{days}日間有効です。",
        "refused_invalid": (
            "このリンクは無効です。通知に記載されたリンクを、変更せずにもう一度開いてください。"
        ),
        "refused_gone": "この通知は保存期間を過ぎたため、ここでは回答できません。",
        "refused_form": (
            "ご回答を受け付けられませんでした。通知のリンクをもう一度開き、ボタンを押してください"
            "（このページでは Cookie を有効にしてください）。"
        ),
        "unavailable": "現在このページをご利用いただけません。数分後にもう一度お試しください。",
        "network_provider": "{country}の{provider}",
        "network_prefix": "ネットワーク {prefix}",
        "help": "ご不明な点は次をご覧ください：{help_url}",
        "settings": "お知らせの設定",
        "notices_on_state": "不審なログインのお知らせは有効です。",
        "notices_off_state": "不審なログインのお知らせは停止中です。",
        "notices_off_button": "お知らせを停止する",
        "notices_on_button": "お知らせを再開する",
        "trip_state": (
            "旅行の予定：{country}（{until}まで）。"
            "この間、その国からの新しいログインはお知らせしません。"
        ),
        "trip_none": "旅行の予定はありません。",
        "trip_country": "国（英字2文字、例：FR）",
        "trip_until": "最終日",
        "trip_button": "旅行を登録する",
        "trip_end_button": "旅行を終了する",
        "saved": "設定を保存しました。",
        "setting_bad": (
            "国は英字2文字の国コード（例：FR、イギリスはGB）、"
            "最終日は今日以降の日付で入力してください。"
        ),
    },
}


def texts(language: str) -> tuple[str, dict[str, str]]:
    """The page language used for ``language`` ("ja-JP" finds "ja") and its words."""
    key = language.replace("_", "-").split("-")[0].lower()
    if key in TEXTS:
        return key, TEXTS[key]
    return "en", TEXTS["en"]
