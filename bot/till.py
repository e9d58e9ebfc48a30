"""The till page: staff check a customer's single-use code and mark it used, from a phone.

GET  /redeem              sign in with the staff PIN, then type a code
GET  /redeem/{token}      the customer's link (or its QR code): the code's state at a glance
GET  /redeem/{token}/qr.png   that link as a QR code
POST /redeem/pin          the staff PIN; a signed session cookie for the rest of the shift
POST /redeem/use          mark the code used (atomic: a second press sees "already used")

And `python -m bot redeem --csv FILE`: the codes of a till's export marked used.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import io
import secrets
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import segno
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from bot import redemption
from bot.bodies import read_body, small_number
from bot.campaign import Campaign
from bot.database import Database, DatabaseError
from bot.pool import CodeState

SESSION_COOKIE = "promobot_staff"
CSRF_COOKIE = "promobot_csrf"
# Given at a sign-in: this browser knew the PIN once. Wrong PINs elsewhere never lock it out.
DEVICE_COOKIE = "promobot_till_device"
SESSION_S = 12 * 3600  # a shift
DEVICE_S = 365 * 24 * 3600
MAX_FORM_BYTES = 4096
# Wrong PINs: at most this many per client (an address, or a known device), and this many from every
# address together, in the window.
CLIENT_FAILURES, ALL_FAILURES, FAILURE_WINDOW_S = 5, 30, 300.0
MAX_CLIENTS = 10_000

_Endpoint = Callable[[Request], Awaitable[Response]]  # a route's handler
_P = ParamSpec("_P")
_R = TypeVar("_R")


class Attempts:
    """Wrong PINs in the last FAILURE_WINDOW_S seconds, per client and overall; memory bounded.

    A known device (one that signed in before) is limited on its own only: its wrong PINs do not count
    overall, and the overall limit does not hold it back. So whoever tries PINs from many addresses, or from
    behind the proxy the shop's phones share, cannot keep staff who signed in before out of the till.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()

    def blocked_for(self, client: str, known_device: bool = False) -> float:
        """Seconds until `client` may try again (0: now)."""
        now = self.clock()
        self._forget(now)
        mine = self._clients.get(client, deque())
        waits = [0.0]
        if len(mine) >= CLIENT_FAILURES:
            waits.append(mine[0] + FAILURE_WINDOW_S - now)
        if not known_device and len(self._all) >= ALL_FAILURES:
            waits.append(self._all[0] + FAILURE_WINDOW_S - now)
        return max(waits)

    def failed(self, client: str, known_device: bool = False) -> None:
        now = self.clock()
        self._clients.setdefault(client, deque()).append(now)
        self._clients.move_to_end(client)
        if not known_device:
            self._all.append(now)
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)

    def _forget(self, now: float) -> None:
        horizon = now - FAILURE_WINDOW_S
        while self._all and self._all[0] < horizon:
            self._all.popleft()
        for client in [c for c, times in self._clients.items() if not times or times[-1] < horizon]:
            del self._clients[client]


def client_address(request: Request, proxies: int = 0) -> str:
    """The address a request came from, as the till counts wrong PINs: the connection's; or, behind
    `proxies` proxies that each add the address they were reached from to X-Forwarded-For, the one the
    first of them was reached from. What stands left of it was sent by the client, who may have made it up;
    a header shorter than `proxies` (a request that did not come through them all) is not believed."""
    if proxies:
        forwarded = ",".join(request.headers.getlist("x-forwarded-for")).split(",")
        hops = [hop.strip() for hop in forwarded if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    return request.client.host if request.client else "unknown"


def till_routes(
    database: Callable[[], Database],
    campaign: Campaign,
    *,
    pin: str,
    secret: str,
    secure_cookies: bool,
    public_url: str,
    proxies: int = 0,
    replies_owed: Callable[[], None] = lambda: None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Route]:
    """The till's routes. `database` gives the open store (it is opened after the routes are made); `pin`
    the staff PIN ("" turns redemption off); `secret` signs sessions; `secure_cookies` for an https bot;
    `public_url` the bot's address, which till links and their QR codes start with; `proxies` how many
    proxies in front add to X-Forwarded-For (client_address); `replies_owed` tells the sender of a thank-you
    recorded."""
    attempts = Attempts()
    key = hmac.new(secret.encode(), b"promobot till sessions", hashlib.sha256).digest()

    def session_value(expires: int) -> str:
        # The PIN is part of what is signed: changing the PIN ends every session.
        mac = hmac.new(key, f"{expires}|{pin}".encode(), hashlib.sha256).hexdigest()
        return f"{expires}.{mac}"

    def device_value(device: str) -> str:
        # Signed with the PIN too: a new PIN makes every device unknown again.
        mac = hmac.new(key, f"device|{device}|{pin}".encode(), hashlib.sha256).hexdigest()
        return f"{device}.{mac}"

    def known_device(request: Request) -> str | None:
        """The id of the device cookie the request carries, if this bot signed it; else None."""
        value = request.cookies.get(DEVICE_COOKIE, "")
        device = value.partition(".")[0]
        if not device or not hmac.compare_digest(value.encode(), device_value(device).encode()):
            return None
        return device

    def signed_in(request: Request) -> bool:
        expires = small_number(request.cookies.get(SESSION_COOKIE, "").partition(".")[0])  # maybe forged
        if expires is None or expires < time.time():
            return False
        return hmac.compare_digest(request.cookies.get(SESSION_COOKIE, ""), session_value(expires))

    def page(request: Request, title: str, body: str, status: int = 200) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(16)
        response = HTMLResponse(
            _PAGE.format(title=html.escape(title), body=body.replace("__CSRF__", csrf)),
            status_code=status,
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )
        if CSRF_COOKIE not in request.cookies:
            _set_cookie(response, CSRF_COOKIE, csrf, SESSION_S, secure_cookies)
        return response

    def pin_page(request: Request, next_path: str, error: str = "", status: int = 200) -> Response:
        message = f'<p class="error">{html.escape(error)}</p>' if error else ""
        form = _PIN_FORM.format(next=html.escape(next_path), error=message)
        return page(request, "Staff sign-in", form, status)

    def card(request: Request, state: CodeState | None, typed: str = "", just_used: bool = False) -> Response:
        now = clock()
        zone = campaign.zone
        if state is None or state.customer_id is None:
            shown = html.escape(typed or "this link")
            body = (
                f'<div class="state unknown"><h1>Unknown code</h1><p>{shown} was never handed out.</p></div>'
            )
        elif state.redeemed_at is not None:
            used = _moment(state.redeemed_at).astimezone(zone)
            heading, kind = ("Redeemed", "valid") if just_used else ("Already used", "used")
            body = (
                f'<div class="state {kind}"><h1>{heading}</h1><p class="code">{html.escape(state.code)}</p>'
                f"<p>Used at {used:%H:%M} on {used.day} {used:%B %Y}.</p></div>"
            )
        elif state.expires_at is not None and _moment(state.expires_at) <= now:
            last_day = (_moment(state.expires_at - 1)).astimezone(zone)
            body = (
                f'<div class="state expired"><h1>Expired</h1><p class="code">{html.escape(state.code)}</p>'
                f"<p>It was valid until {last_day.day} {last_day:%B %Y}.</p></div>"
            )
        else:
            until = ""
            if state.expires_at is not None:
                last_day = (_moment(state.expires_at - 1)).astimezone(zone)
                until = f"<p>Valid until {last_day.day} {last_day:%B %Y}.</p>"
            body = (
                f'<div class="state valid"><h1>Valid</h1><p class="code">{html.escape(state.code)}</p>{until}'
                f'<form method="post" action="/redeem/use"><input type="hidden" name="csrf" value="__CSRF__">'
                f'<input type="hidden" name="token" value="{html.escape(state.token or "")}">'
                '<button type="submit">Redeem now</button></form></div>'
            )
        return page(request, "Coupon", body + _LOOKUP_FORM)

    def off(request: Request) -> Response:
        body = "<p>Redemption at the till is off: set PROMOBOT_STAFF_PIN and restart the bot.</p>"
        return page(request, "Till", body, status=503)

    async def lookup(request: Request) -> Response:
        typed = request.query_params.get("code", "").strip()
        if not signed_in(request):
            next_path = "/redeem" + (f"?code={quote(typed)}" if typed else "")
            return pin_page(request, next_path)
        if not typed:
            return page(request, "Till", _LOOKUP_FORM)
        state = await _store(redemption.find_code, database(), campaign_id=campaign.id, code=typed)
        if state is None and typed != typed.upper():  # typed in lower case
            state = await _store(
                redemption.find_code, database(), campaign_id=campaign.id, code=typed.upper()
            )
        return card(request, state, typed=typed)

    async def by_link(request: Request) -> Response:
        token = request.path_params["token"]
        if not signed_in(request):
            return pin_page(request, f"/redeem/{quote(token)}")
        return card(request, await _store(redemption.find_code, database(), token=token))

    async def sign_in(request: Request, form: dict[str, str]) -> Response:
        next_path = form.get("next", "/redeem")
        if not next_path.startswith("/redeem") or next_path.startswith("//"):
            next_path = "/redeem"
        device = known_device(request)
        client = f"device {device}" if device is not None else client_address(request, proxies)
        wait = attempts.blocked_for(client, known_device=device is not None)
        if wait > 0:
            error = f"Too many wrong PINs: try again in {int(wait // 60) + 1} minutes."
            return pin_page(request, next_path, error, status=429)
        if not hmac.compare_digest(form.get("pin", "").encode(), pin.encode()):
            attempts.failed(client, known_device=device is not None)
            return pin_page(request, next_path, "Wrong PIN.", status=403)
        response = RedirectResponse(next_path, status_code=303, headers={"Cache-Control": "no-store"})
        expires = int(time.time()) + SESSION_S
        _set_cookie(response, SESSION_COOKIE, session_value(expires), SESSION_S, secure_cookies)
        device_cookie = device_value(device or secrets.token_urlsafe(12))  # no "." in its id
        _set_cookie(response, DEVICE_COOKIE, device_cookie, DEVICE_S, secure_cookies)
        return response

    async def use(request: Request, form: dict[str, str]) -> Response:
        token = form.get("token", "")
        if not signed_in(request):
            return pin_page(request, f"/redeem/{quote(token)}")
        thank = campaign.redeemed_text is not None
        redeemed = await _store(redemption.redeem, database(), token, thank=thank)
        if redeemed is not None:
            if thank:
                replies_owed()
            return card(request, redeemed, just_used=True)
        return card(
            request, await _store(redemption.find_code, database(), token=token)
        )  # used, expired or unknown

    def answering_store_errors(handler: _Endpoint) -> _Endpoint:
        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except DatabaseError:
                body = "<p>The bot's store is not answering. Try again in a moment.</p>"
                return page(request, "Till", body, status=503)

        return handle

    def staff_page(handler: Callable[..., Awaitable[Response]]) -> _Endpoint:
        """A page of the till: off without a PIN; a POST's form read and its CSRF token checked first.
        `handler` takes the request, and for a POST the form too."""

        async def handle(request: Request) -> Response:
            if not pin:
                return off(request)
            if request.method != "POST":
                return await handler(request)
            form = await _form(request)
            if form is None or not _csrf_ok(request, form):
                body = "<p>This form has expired: open the page again.</p>"
                return page(request, "Till", body, status=403)
            return await handler(request, form)

        return answering_store_errors(handle)

    async def qr_code(request: Request) -> Response:
        """The QR code of a code's till link (the image the customer is sent): no PIN, it shows only the
        link, which whoever has the token has already."""
        token = request.path_params["token"]
        state = await _store(redemption.find_code, database(), token=token)
        if state is None or state.customer_id is None:
            return Response("not found", status_code=404, media_type="text/plain")
        image = io.BytesIO()
        segno.make(f"{public_url}/redeem/{token}", error="m").save(image, kind="png", scale=8, border=2)
        headers = {"Cache-Control": "private, max-age=86400"}
        return Response(image.getvalue(), media_type="image/png", headers=headers)

    return [
        Route("/redeem/{token}/qr.png", answering_store_errors(qr_code), methods=["GET", "HEAD"]),
        Route("/redeem", staff_page(lookup), methods=["GET"]),
        Route("/redeem/pin", staff_page(sign_in), methods=["POST"]),
        Route("/redeem/use", staff_page(use), methods=["POST"]),
        Route("/redeem/{token}", staff_page(by_link), methods=["GET"]),
    ]


async def _store(call: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """A blocking store call, in a thread. Raises DatabaseError."""
    return await asyncio.to_thread(call, *args, **kwargs)


async def _form(request: Request) -> dict[str, str] | None:
    """A small url-encoded form's fields; None for anything else."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    body = await read_body(request, MAX_FORM_BYTES)
    if body is None:
        return None
    try:
        fields = parse_qs(body.decode("utf-8"), strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {name: values[0] for name, values in fields.items()}


def _csrf_ok(request: Request, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), form.get("csrf", "").encode())


def _set_cookie(response: Response, name: str, value: str, max_age: int, secure: bool) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/redeem", httponly=True, samesite="strict", secure=secure
    )


def _moment(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1e6, UTC)


_PIN_FORM = """<h2>Staff sign-in</h2>
<p class="hint">Enter the staff PIN to check customers' coupons. You stay signed in for the shift.</p>
{error}
<form method="post" action="/redeem/pin">
  <input type="hidden" name="csrf" value="__CSRF__"><input type="hidden" name="next" value="{next}">
  <label>Staff PIN <input name="pin" type="password" inputmode="numeric" autocomplete="off" autofocus></label>
  <button type="submit">Sign in</button>
</form>"""

_LOOKUP_FORM = """
<form method="get" action="/redeem" class="lookup">
  <label>Type a code
    <input name="code" autocapitalize="characters" autocomplete="off" spellcheck="false"></label>
  <button type="submit">Check</button>
</form>"""

# One column sized for a phone held at the till; the state's colour and its sign (drawn by CSS, so that the
# heading's text stays the state's name) say at a glance what to do; inputs of at least 16px, so that phones
# do not zoom in on them.
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light"><meta name="robots" content="noindex">
<title>{title} · promobot till</title>
<style>
* {{ box-sizing: border-box; }}
html {{ -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }}
body {{ font: 18px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b;
  margin: 0 auto; max-width: 30rem; padding: 1rem; }}
h1 {{ margin: 0; font-size: 2.4rem; line-height: 1.15; }}
h2 {{ margin: .5rem 0 .25rem; font-size: 1.5rem; }}
p {{ margin: .5rem 0; }}
.hint {{ color: #555; margin-bottom: 1.25rem; }}
.state {{ border-radius: 1rem; padding: 1.25rem; margin-bottom: 1.5rem; color: #fff; }}
.state h1::before {{ display: inline-block; width: 1.2em; }}
.valid {{ background: #16794b; }} .valid h1::before {{ content: "\\2713"; }}
.used {{ background: #b3261e; }} .used h1::before {{ content: "\\2715"; }}
.expired {{ background: #8f4f00; }} .expired h1::before {{ content: "!"; }}
.unknown {{ background: #555; }} .unknown h1::before {{ content: "?"; }}
.code {{ font: 700 1.9rem/1.2 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  letter-spacing: .06em; margin: .5rem 0; overflow-wrap: anywhere; }}
.error {{ color: #b3261e; font-weight: 700; }}
label {{ display: block; margin-bottom: .75rem; font-weight: 600; }}
input {{ display: block; width: 100%; font-family: inherit; font-size: 1.4rem; padding: .7rem;
  margin-top: .35rem; border: 2px solid #767676; border-radius: .6rem; }}
input:focus {{ outline: 3px solid #1d4ed8; outline-offset: 1px; }}
button {{ display: block; width: 100%; min-height: 3.25rem; font-family: inherit; font-size: 1.3rem;
  font-weight: 700; padding: .9rem; border: 0; border-radius: .6rem; background: #1d4ed8; color: #fff; }}
.state button {{ margin-top: 1rem; min-height: 4rem; font-size: 1.5rem; background: #fff; color: #16794b; }}
/* Under a coupon's card, looking up another code is the quieter action. */
.state + .lookup {{ border-top: 1px solid #ddd; padding-top: 1rem; }}
.state + .lookup label {{ font-weight: 400; color: #555; }}
.state + .lookup button {{ background: #e8e8e8; color: #1b1b1b; }}
</style></head>
<body>{body}</body></html>"""


def redeem_command(path: Path, campaign_id: str | None, tz: str = "UTC") -> int:
    """`python -m bot redeem --csv FILE [--tz ZONE]`: mark the codes of a till's export used (times without a
    zone in `tz`), then write the events."""
    from bot.codes import CodesError, read_redemptions
    from bot.config import ConfigError
    from bot.database import DatabaseError
    from bot.flusher import FlushError, flush_once
    from bot.startup import command_settings, file_store, open_database

    try:
        settings = command_settings()
        if campaign_id is None:
            from bot.campaign import load_campaign

            campaign_id = load_campaign(settings.campaign).id
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"--tz {tz!r} is not a time zone (an IANA name, as Europe/Paris)") from None
        used = read_redemptions(path, datetime.now(UTC), zone)
        database = open_database(settings)
        try:
            counts = redemption.redeem_codes(database, campaign_id, used)
            flush_once(database, file_store(settings))
        finally:
            database.close()
    except (ConfigError, CodesError, DatabaseError, FlushError, ValueError) as exc:
        print(f"promobot redeem: {exc}", file=sys.stderr)
        return 1
    print(f"{counts['new']} redeemed now, {counts['already']} already redeemed, {counts['unknown']} unknown")
    return 0


__all__ = ["Attempts", "redeem_command", "till_routes"]
