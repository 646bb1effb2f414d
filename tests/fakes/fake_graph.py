#!/usr/bin/env python3
"""fake_graph -- a fake of Meta's Graph API send endpoints, for omni-send's
tests: the WhatsApp Cloud API and the Messenger Send API.

    POST /v*/PHONE_NUMBER_ID/messages   WhatsApp Cloud API
        {"messaging_product":"whatsapp","to":"5511...","type":"text",
         "text":{"body":"..."}}
        -> {"messaging_product":"whatsapp",
            "contacts":[{"input":"5511...","wa_id":"5511..."}],
            "messages":[{"id":"wamid.<random>"}]}
    POST /v*/me/messages                Messenger Send API
        {"recipient":{"id":"PSID"},"messaging_type":"RESPONSE",
         "message":{"text":"..."}}
        -> {"recipient_id":"PSID","message_id":"m_<random>"}

Authorization: Bearer TOKEN (or ?access_token=TOKEN) must match --token when
given (--page-token for Messenger, when given); a bad token gets 401 with Graph's code 190. Bad bodies get 400 with
Graph's code 100. Failures use Graph's error body
{"error":{"message","type","code","fbtrace_id"}}; rate limits answer 429
with code 130429 (WhatsApp) or 613 (Messenger). Conventions (--port,
--ready, --record, /_control) are fakelib's.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakelib  # noqa: E402

WA_PATH = re.compile(r"^/v[0-9.]+/([0-9A-Za-z_]+)/messages$")


def rand_id(n):
    return os.urandom(n).hex().upper()


class Handler(fakelib.FakeHandler):
    name = "fake_graph"

    def error_body(self, status, message, code=None, etype="OAuthException"):
        if code is None:
            code = {400: 100, 401: 190, 403: 10, 404: 803, 429: 4}.get(status, 1)
        if status >= 500:
            etype = "GraphMethodException"
        return {"error": {"message": message, "type": etype, "code": code,
                          "fbtrace_id": "A" + rand_id(10)}}

    def rate_limit_body(self, retry_after):
        if "/me/" in self.path:
            return self.error_body(429, "(#613) Calls to this api have exceeded the rate limit.",
                                   code=613)
        return self.error_body(429, "(#130429) Rate limit hit", code=130429)

    def _token_ok(self, query, messenger):
        want = self.server.args.token
        if messenger and self.server.args.page_token:
            want = self.server.args.page_token
        if not want:
            return True
        auth = self.header("Authorization") or ""
        if auth == "Bearer " + want:
            return True
        return query.get("access_token") == want

    def route(self, method, path, query, body):
        m = WA_PATH.match(path)
        if method != "POST" or m is None:
            return 404, self.error_body(404, "Unknown path components: " + path, code=2500)
        if not self._token_ok(query, m.group(1) == "me"):
            return 401, self.error_body(401, "Invalid OAuth access token - Cannot parse access token")
        doc = self.json(body)
        if not isinstance(doc, dict):
            return 400, self.error_body(400, "(#100) The parameter messaging_product is required.")
        if m.group(1) == "me":
            return self._messenger(doc)
        want_phone = self.server.args.phone_id
        if want_phone and m.group(1) != want_phone:
            return 400, self.error_body(400, "Unsupported post request. Object with ID '%s' does not exist"
                                        % m.group(1), code=100, etype="GraphMethodException")
        return self._whatsapp(doc)

    def _whatsapp(self, doc):
        if doc.get("messaging_product") != "whatsapp":
            return 400, self.error_body(400, "(#100) The parameter messaging_product is required.")
        to = doc.get("to")
        if not isinstance(to, str) or not re.match(r"^[0-9]{6,15}$", to):
            return 400, self.error_body(400, "(#100) Invalid parameter", code=100)
        if self.server.args.reject_to and to == self.server.args.reject_to:
            return 400, self.error_body(400, "(#131030) Recipient phone number not in allowed list",
                                        code=131030)
        t = doc.get("type", "text")
        if t == "text":
            text = doc.get("text")
            if not isinstance(text, dict) or not isinstance(text.get("body"), str) or not text["body"]:
                return 400, self.error_body(400, "(#100) The parameter text['body'] is required.")
        wamid = "wamid." + rand_id(24)
        return 200, {"messaging_product": "whatsapp",
                     "contacts": [{"input": to, "wa_id": to}],
                     "messages": [{"id": wamid}]}

    def _messenger(self, doc):
        rcpt = doc.get("recipient")
        if not isinstance(rcpt, dict) or not isinstance(rcpt.get("id"), str):
            return 400, self.error_body(400, "(#100) The parameter recipient is required")
        if doc.get("messaging_type") not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            return 400, self.error_body(400, "(#100) Param messaging_type must be one of "
                                        "{RESPONSE, UPDATE, MESSAGE_TAG}")
        msg = doc.get("message")
        if not isinstance(msg, dict) or not (msg.get("text") or msg.get("attachment")):
            return 400, self.error_body(400, "(#100) The parameter message is required")
        if self.server.args.reject_to and rcpt["id"] == self.server.args.reject_to:
            return 400, self.error_body(400, "(#551) This person isn't available right now.",
                                        code=551)
        return 200, {"recipient_id": rcpt["id"], "message_id": "m_" + rand_id(20)}


def add_args(p):
    p.add_argument("--token", help="the access token requests must carry")
    p.add_argument("--page-token", help="the Messenger page token (default: --token)")
    p.add_argument("--phone-id", help="the only WhatsApp phone number id accepted")
    p.add_argument("--reject-to", help="a recipient answered 400 as not reachable")


if __name__ == "__main__":
    sys.exit(fakelib.main(Handler, "Fake Graph API (WhatsApp Cloud, Messenger Send)", add_args))
