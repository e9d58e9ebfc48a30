"""Checks of the page through the Graph API.

Its token, the webhook subscription, the app id, the opt-out menu item, and the API version's end of life.
"""

from __future__ import annotations

import asyncio
import time
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote

from bot.flow import OPT_OUT_MENU_TITLE, OPT_OUT_PAYLOAD
from bot.graph import GraphClient
from bot.graph_errors import TOKEN_INVALID, SendError
from bot.health import Check, Name, Status

# The webhook fields the bot acts on (bot.messenger parses them), each a Page Webhooks field of the Messenger
# Platform; `--fix` subscribes the app to these.
NEEDED_FIELDS = (
    "messages",  # what customers write
    "messaging_postbacks",  # button clicks, Get Started, the persistent menu
    "messaging_referrals",  # m.me links, QR codes and ads opened in a thread that exists
    "message_deliveries",  # delivery receipts
    "message_reads",  # read receipts: the funnel's coupon_seen
    "message_echoes",  # the page's own messages: staff answering by hand pause the bot
    "message_reactions",  # a reaction is the customer's own action: it keeps the messaging window open
)

RECONNECT = (
    "reconnect the page: in the Meta app dashboard open Messenger → Messenger API settings, generate a new "
    "page access token for the page, set PROMOBOT_PAGE_TOKEN to it, and restart the bot"
)
# Error 190's subcodes that say why a token stopped working (Graph API, "Handling Errors").
TOKEN_SUBCODES = {
    460: "the password of the account that made it was changed",
    463: "it has expired",
    467: "it is no longer valid (the session that made it ended)",
}


def _token_refused(error: SendError) -> Check:
    why = TOKEN_SUBCODES.get(error.subcode or 0, "it is invalid or was revoked")
    code = f"code {error.code}" + (f", subcode {error.subcode}" if error.subcode else "")
    return Check(Name.PAGE, Status.FAIL, f"the Graph API refuses the page token ({code}): {why}", RECONNECT)


def _unreachable(name: str, what: str, error: SendError) -> Check:
    if error.transient:
        fix = "check this machine's network and https://metastatus.com, then run the doctor again"
    else:
        fix = "check the app's permissions for the page (pages_messaging, pages_manage_metadata)"
    return Check(name, Status.FAIL, f"could not {what}: {error.reason}", fix)


async def graph_checks(
    graph: GraphClient,
    *,
    fix: bool = False,
    deadline_s: float | None = None,
    app_id: str | None = None,
    menu: bool = False,
) -> list[Check]:
    """Check the page token (`GET /me`), the app's webhook subscription (`GET /{page}/subscribed_apps`) and,
    with `menu`, the page's persistent menu (`GET /me/messenger_profile`); with `fix`, subscribe the app to
    the fields it lacks and add the opt-out item to the menu.

    Parameters: `deadline_s` how long each call may take, retries included (default: the client's); `app_id`
    PROMOBOT_APP_ID, checked against the token's app ("" unset; None: not checked).
    Returns: the "page token", "webhooks" (then "app id", "persistent menu") checks. Raises nothing: a
    failed call is a failed check.
    """
    try:
        page = await graph.get("me", {"fields": "id,name"}, deadline_s=deadline_s)
    except SendError as exc:
        if exc.code == TOKEN_INVALID:
            token = _token_refused(exc)
        else:
            token = _unreachable(Name.PAGE, "ask the Graph API for the page", exc)
        return [token, Check(Name.WEBHOOKS, Status.WARN, "not checked: the page token does not work")]
    page_id = str(page.get("id", "")) if isinstance(page, dict) else ""
    name = page.get("name") if isinstance(page, dict) else None
    if not page_id:
        return [
            Check(Name.PAGE, Status.FAIL, "the Graph API named no page for the token", RECONNECT),
            Check(Name.WEBHOOKS, Status.WARN, "not checked: the page token does not work"),
        ]
    token = Check(Name.PAGE, Status.OK, f"valid, for the page {name!r} ({page_id})")
    try:
        app = await graph.get("app", {"fields": "id,name"}, deadline_s=deadline_s)
        token_app = str(app.get("id", "")) if isinstance(app, dict) else ""
    except SendError:
        token_app = ""  # the token's app unknown: a page with one subscribed app is still checked
    checks = [token, await _webhooks(graph, page_id, token_app, fix=fix, deadline_s=deadline_s)]
    if app_id is not None:
        checks.append(_app_id_check(app_id, token_app))
    if menu:
        checks.append(await _menu(graph, fix=fix, deadline_s=deadline_s))
    return checks


def _app_id_check(configured: str, token_app: str) -> Check:
    """PROMOBOT_APP_ID against the app the page token belongs to (whose echoes are the bot's own sends)."""
    if not token_app:
        return Check(Name.APP_ID, Status.WARN, "not checked: the Graph API did not name the token's app")
    if not configured:
        return Check(
            Name.APP_ID,
            Status.WARN,
            "PROMOBOT_APP_ID is not set: staff answering by hand in the page's inbox do not pause the bot",
            f"set PROMOBOT_APP_ID={token_app} and restart",
        )
    if configured != token_app:
        return Check(
            Name.APP_ID,
            Status.FAIL,
            f"PROMOBOT_APP_ID is {configured}, but the page token is the app {token_app}'s: the bot takes "
            "its own messages for staff's and pauses itself after each",
            f"set PROMOBOT_APP_ID={token_app} and restart",
        )
    return Check(Name.APP_ID, Status.OK, f"{token_app}: the bot tells its own messages from staff's")


_MENU_FIELDS = "persistent_menu,get_started"
_GET_STARTED = "GET_STARTED"  # the Get Started button's payload when the page has none (the menu needs one)


async def _menu(graph: GraphClient, *, fix: bool, deadline_s: float | None) -> Check:
    """Whether the page's persistent menu offers the opt-out item; with `fix`, add it (keeping the page's
    own items, and setting a Get Started button if there is none: the platform shows no menu without)."""
    try:
        profile = await _profile(graph, deadline_s)
        fixed = fix and not _has_opt_out(profile)
        if fixed:
            await graph.post("me/messenger_profile", _with_opt_out(profile), deadline_s=deadline_s)
            profile = await _profile(graph, deadline_s)
    except SendError as exc:
        return Check(
            Name.MENU,
            Status.WARN,
            f"could not read or set the page's persistent menu: {exc.reason}",
            "check the app's permissions for the page (pages_messaging)",
        )
    if not _has_opt_out(profile):
        return Check(
            Name.MENU,
            Status.WARN,
            f"no {OPT_OUT_MENU_TITLE!r} item: customers can only opt out by writing a stop word",
            "run `python -m bot doctor --fix` to add it",
        )
    now = " now (--fix)" if fixed else ""
    return Check(Name.MENU, Status.OK, f"offers {OPT_OUT_MENU_TITLE!r}{now}")


async def _profile(graph: GraphClient, deadline_s: float | None) -> dict[str, Any]:
    answer = await graph.get("me/messenger_profile", {"fields": _MENU_FIELDS}, deadline_s=deadline_s)
    data = answer.get("data") if isinstance(answer, dict) else None
    return data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}


def _menus(profile: dict[str, Any]) -> list[dict[str, Any]]:
    menus = profile.get("persistent_menu")
    return [menu for menu in menus if isinstance(menu, dict)] if isinstance(menus, list) else []


def _items(menu: dict[str, Any]) -> list[object]:
    items = menu.get("call_to_actions")
    return items if isinstance(items, list) else []


def _is_opt_out(item: object) -> bool:
    return isinstance(item, dict) and item.get("payload") == OPT_OUT_PAYLOAD


def _has_opt_out(profile: dict[str, Any]) -> bool:
    """Whether there is a menu and every locale's has the opt-out item."""
    menus = _menus(profile)
    return bool(menus) and all(any(map(_is_opt_out, _items(menu))) for menu in menus)


def _with_opt_out(profile: dict[str, Any]) -> dict[str, Any]:
    """The Messenger Profile fields that add the opt-out item to each locale's menu (a `default` one when
    there is none) and a Get Started button when the page has none."""
    item = {"type": "postback", "title": OPT_OUT_MENU_TITLE, "payload": OPT_OUT_PAYLOAD}
    menus = _menus(profile) or [
        {"locale": "default", "composer_input_disabled": False, "call_to_actions": []}
    ]
    fields: dict[str, Any] = {
        "persistent_menu": [
            {**menu, "call_to_actions": [*(i for i in _items(menu) if not _is_opt_out(i)), item]}
            for menu in menus
        ]
    }
    if not isinstance(profile.get("get_started"), dict):
        fields["get_started"] = {"payload": _GET_STARTED}
    return fields


async def _webhooks(
    graph: GraphClient, page_id: str, app_id: str, *, fix: bool, deadline_s: float | None
) -> Check:
    edge = f"{quote(page_id, safe='')}/subscribed_apps"
    try:
        fields = _subscribed_fields(await graph.get(edge, deadline_s=deadline_s), app_id)
        missing = [field for field in NEEDED_FIELDS if field not in (fields or ())]
        fixed = bool(missing and fix)
        if fixed:
            # The POST sets the subscription's fields: keep those subscribed already for other uses.
            wanted = [*(fields or ()), *missing]
            await graph.post(edge, {"subscribed_fields": ",".join(wanted)}, deadline_s=deadline_s)
            fields = _subscribed_fields(await graph.get(edge, deadline_s=deadline_s), app_id)
            missing = [field for field in NEEDED_FIELDS if field not in (fields or ())]
    except SendError as exc:
        return _unreachable(Name.WEBHOOKS, "read or change the page's webhook subscription", exc)
    subscribe = "run `python -m bot doctor --fix` to subscribe it"
    if fields is None:
        return Check(
            Name.WEBHOOKS, Status.FAIL, "the app is not subscribed to the page's webhooks", subscribe
        )
    if missing:
        message = f"the app's subscription lacks {', '.join(missing)}"
        return Check(Name.WEBHOOKS, Status.FAIL, message, subscribe)
    now = " now (--fix)" if fixed else ""
    return Check(Name.WEBHOOKS, Status.OK, f"subscribed{now} to {', '.join(NEEDED_FIELDS)}")


def _subscribed_fields(answer: object, app_id: str) -> list[str] | None:
    """The fields the app is subscribed to, from a subscribed_apps answer; None when it is not subscribed.

    Without the app's id, the page's only subscribed app is taken for it.
    """
    apps = answer.get("data") if isinstance(answer, dict) else None
    apps = [app for app in apps if isinstance(app, dict)] if isinstance(apps, list) else []
    ours = [app for app in apps if str(app.get("id")) == app_id] if app_id else apps
    if len(ours) != 1:
        return None
    fields = ours[0].get("subscribed_fields")
    return [str(field) for field in fields] if isinstance(fields, list) else []


# Each version's expiry date, from the Graph API changelog's list of versions; None: not announced yet.
# A version older than every one listed has expired.
GRAPH_VERSIONS: dict[str, date | None] = {
    "v26.0": None,
    "v25.0": date(2028, 7, 29),
    "v24.0": date(2028, 2, 18),
    "v23.0": date(2027, 10, 8),
    "v22.0": date(2027, 5, 20),
    "v21.0": date(2027, 1, 21),
    "v20.0": date(2026, 9, 24),
    "v19.0": date(2026, 5, 21),
    "v18.0": date(2026, 1, 26),
    "v17.0": date(2025, 9, 12),
    "v16.0": date(2025, 5, 14),
    "v15.0": date(2024, 11, 20),
}
VERSION_WARNING = timedelta(days=90)  # warn this long before the version expires


def _version_number(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in version.removeprefix("v").split("."))
    except ValueError:
        return None


def version_check(version: str, today: date) -> Check:
    """The Graph API version in use against its documented expiry: a warning within VERSION_WARNING of it,
    a failure once past (the platform then answers as a newer version)."""
    upgrade = "set PROMOBOT_GRAPH_VERSION to a newer version (see the Graph API changelog) and restart"
    number = _version_number(version)
    oldest = min(_version_number(known) or () for known in GRAPH_VERSIONS)
    if version not in GRAPH_VERSIONS:
        if number is not None and number < oldest:
            return Check(Name.GRAPH_VERSION, Status.FAIL, f"{version} has expired", upgrade)
        return Check(
            Name.GRAPH_VERSION,
            Status.WARN,
            f"{version} is not a version promobot knows the end of life of",
            "check its expiry date in the Graph API changelog",
        )
    expires = GRAPH_VERSIONS[version]
    if expires is None:
        return Check(Name.GRAPH_VERSION, Status.OK, f"{version}, no end of life announced yet")
    left = expires - today
    if left <= timedelta(0):
        return Check(Name.GRAPH_VERSION, Status.FAIL, f"{version} expired on {expires.isoformat()}", upgrade)
    if left < VERSION_WARNING:
        message = f"{version} expires on {expires.isoformat()}, in {left.days} days"
        return Check(Name.GRAPH_VERSION, Status.WARN, message, upgrade)
    return Check(Name.GRAPH_VERSION, Status.OK, f"{version}, available until {expires.isoformat()}")


GRAPH_CACHE_S = 60.0  # a monitor probing every few seconds asks the Graph API once a minute


class CachedGraphChecks:
    """`graph_checks` at most once per `ttl_s`; concurrent askers share one run."""

    def __init__(self, ttl_s: float = GRAPH_CACHE_S) -> None:
        self.ttl_s = ttl_s
        self._checks: list[Check] = []
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self, graph: GraphClient, *, deadline_s: float | None = None) -> list[Check]:
        async with self._lock:
            if time.monotonic() - self._at >= self.ttl_s:
                self._checks = await graph_checks(graph, deadline_s=deadline_s)
                self._at = time.monotonic()
            return list(self._checks)
