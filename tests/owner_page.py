"""The account owner answering a notice's link, as a browser does: GET the page, POST its form.

``answer_link(url, "deny")`` opens the link (the page sets the ``ps_csrf`` cookie and holds a
form with the hidden fields ``t`` and ``csrf`` and a button per answer, then the forms of the
owner's settings, all POSTs), then submits the answer's form
with the chosen button, the cookie and the page's ``Origin``, and returns the result page.
"""

from __future__ import annotations

import urllib.parse
from html.parser import HTMLParser

import aiohttp

CSRF_COOKIE = "ps_csrf"


class _Form(HTMLParser):
    """The page's forms, their hidden fields and their answer buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, str]] = []  # (method, action)
        self.fields: dict[str, str] = {}
        self.buttons: list[tuple[str, str]] = []  # (name, value) of each submit button

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a.get("method", "get").lower(), a.get("action", "")))
        elif tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "button" and a.get("type", "submit") == "submit" and a.get("name"):
            self.buttons.append((a["name"], a.get("value", "")))


def _fail(step: str, status: int, body: str) -> AssertionError:
    return AssertionError(f"{step}: HTTP {status}\n{body}")


async def answer_link(url: str, answer: str) -> str:
    """Open the owner's link ``url`` and press the ``answer`` button ("confirm" or "deny");
    the result page's HTML. Raises AssertionError (with the status and the body) when the
    page, its form or the answer is not what an owner's browser gets."""
    parts = urllib.parse.urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    # unsafe: keep cookies of an IP-address host such as 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(url, allow_redirects=False) as resp:
            status, page = resp.status, await resp.text()
            cookie = resp.cookies.get(CSRF_COOKIE)
        if status != 200:
            raise _fail(f"GET {url}", status, page)
        if cookie is None or not cookie.value:
            raise _fail(f"GET {url}: no {CSRF_COOKIE} cookie set", status, page)
        form = _Form()
        form.feed(page)
        # the answer's form first, then the owner's settings; every one of them a POST
        if not form.forms or any(method != "post" for method, _ in form.forms):
            raise _fail(f"GET {url}: not only <form method=post> but {form.forms}", status, page)
        missing = {"t", "csrf"} - form.fields.keys()
        if missing:
            raise _fail(f"GET {url}: no hidden {sorted(missing)} in the form", status, page)
        if ("answer", answer) not in form.buttons:
            raise _fail(f"GET {url}: no {answer!r} button, only {form.buttons}", status, page)
        target = urllib.parse.urljoin(url, form.forms[0][1])
        fields = {**form.fields, "answer": answer}  # every hidden field, as a browser sends
        async with session.post(
            target, data=fields, headers={"Origin": origin}, allow_redirects=False
        ) as resp:
            status, result = resp.status, await resp.text()
        if status != 200:
            raise _fail(f"POST {target} answer={answer}", status, result)
        return result
