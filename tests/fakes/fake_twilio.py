#!/usr/bin/env python3
"""fake_twilio -- a fake of Twilio's Programmable Messaging REST API, for
omni-send's tests (channels sms and voice follow-ups).

    POST /2010-04-01/Accounts/{AccountSid}/Messages.json
        form-encoded To, From (or MessagingServiceSid), Body
        HTTP basic auth AccountSid:AuthToken
        -> 201 {"sid":"SM<32 hex>","status":"queued","to":..,"from":..,
                "body":..,"account_sid":..,"api_version":"2010-04-01",..}

Errors as Twilio sends them: {"code","message","more_info","status"} --
401 code 20003 (bad credentials), 404 code 20404 (another account's path),
400 code 21604 (no To) / 21603 (no From) / 21602 (no Body) / 21211 (To not
a phone number, or --reject-to), 429 code 20429 with Retry-After.
Conventions (--port, --ready, --record, /_control) are fakelib's.
"""
import base64
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakelib  # noqa: E402

PATH = re.compile(r"^/2010-04-01/Accounts/([A-Za-z0-9]+)/Messages\.json$")
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def twilio_error(status, code, message):
    return {"code": code, "message": message,
            "more_info": "https://www.twilio.com/docs/errors/%d" % code, "status": status}


class Handler(fakelib.FakeHandler):
    name = "fake_twilio"

    def error_body(self, status, message):
        code = {400: 21211, 401: 20003, 404: 20404, 429: 20429}.get(status, 20500)
        if status >= 500:
            message = "Internal Server Error"
        return twilio_error(status, code, message)

    def rate_limit_body(self, retry_after):
        return twilio_error(429, 20429, "Too Many Requests")

    def _auth(self):
        """The (user, password) of the Authorization header, or None."""
        h = self.header("Authorization") or ""
        if not h.startswith("Basic "):
            return None
        try:
            user, _, pw = base64.b64decode(h[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user, pw

    def route(self, method, path, query, body):
        m = PATH.match(path)
        if m is None:
            return 404, twilio_error(404, 20404, "The requested resource %s was not found" % path)
        args = self.server.args
        auth = self._auth()
        if auth is None or (args.sid and auth[0] != args.sid) or (args.token and auth[1] != args.token):
            return 401, twilio_error(401, 20003, "Authenticate")
        if auth[0] != m.group(1):
            return 404, twilio_error(404, 20404, "The requested resource %s was not found" % path)
        if method != "POST":
            return 405, twilio_error(405, 20004, "Method not allowed")
        form = self.form(body)
        to, frm, text = form.get("To"), form.get("From"), form.get("Body")
        if not to:
            return 400, twilio_error(400, 21604, "A 'To' phone number is required.")
        if not frm and not form.get("MessagingServiceSid"):
            return 400, twilio_error(400, 21603, "A 'From' phone number is required.")
        if not text and not form.get("MediaUrl"):
            return 400, twilio_error(400, 21602, "Message body is required.")
        if not E164.match(to) or to == args.reject_to:
            return 400, twilio_error(400, 21211, "The 'To' number %s is not a valid phone number." % to)
        sid = "SM" + os.urandom(16).hex()
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        return 201, {
            "account_sid": auth[0], "api_version": "2010-04-01", "body": text or "",
            "date_created": now, "date_sent": None, "date_updated": now,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": frm, "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0", "num_segments": "1", "price": None, "price_unit": "USD",
            "sid": sid, "status": "queued", "to": to,
            "uri": "/2010-04-01/Accounts/%s/Messages/%s.json" % (auth[0], sid),
            "subresource_uris": {"media": "/2010-04-01/Accounts/%s/Messages/%s/Media.json"
                                 % (auth[0], sid)},
        }


def add_args(p):
    p.add_argument("--sid", help="the account SID basic auth must carry")
    p.add_argument("--token", help="the auth token basic auth must carry")
    p.add_argument("--reject-to", help="a To number answered 400 (code 21211)")


if __name__ == "__main__":
    sys.exit(fakelib.main(Handler, "Fake Twilio Messages REST API", add_args))
