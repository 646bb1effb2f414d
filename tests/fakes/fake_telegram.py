#!/usr/bin/env python3
"""fake_telegram -- the Telegram Bot API (https://core.telegram.org/bots/api)
on 127.0.0.1, for omni-ingest-telegram and omni-send: every method is
/bot<TOKEN>/<method>, by GET (query) or POST (JSON, form or multipart-less
query), answered as Telegram answers: {"ok": true, "result": ...} or
{"ok": false, "error_code": N, "description": "..."}.

Methods
-------
getMe
    {"id": --bot-id, "is_bot": true, "first_name": "Omnibus Test",
     "username": --bot-username}
getUpdates  offset, limit (1..100, default 100), timeout (s), allowed_updates
    Updates are kept in a queue in update_id order. As on Telegram, an
    offset confirms: every update with update_id < offset is forgotten for
    good; a negative offset keeps only the last -offset updates. The answer
    is the first `limit` updates with update_id >= offset whose type is in
    allowed_updates (when given: a JSON array). When there are none and
    timeout > 0 it is a real long poll: the request is held until updates
    are queued or timeout seconds pass (then "result": []). A getUpdates
    that arrives while another one is held ends the held one with
    409 "Conflict: terminated by other getUpdates request; make sure that
    only one bot instance is running", as Telegram does.
sendMessage  chat_id, text (+ anything else, recorded)
    {"message_id": N, "from": {bot}, "chat": {"id": chat_id}, "date": now,
     "text": text}; no text -> 400 "Bad Request: message text is empty";
    no chat_id -> 400 "Bad Request: chat not found".
getFile  file_id -> {"file_id", "file_unique_id", "file_size": 0,
    "file_path": "files/<file_id>"}
A wrong token -> 401 {"ok": false, "error_code": 401, "description":
"Unauthorized"}; an unknown method -> 404 "Not Found".

Options (besides fakelib's --port, --ready, --record, --verbose)
----------------------------------------------------------------
    --token T          the bot token (default 123456:TEST-TOKEN)
    --updates FILE     JSON lines of Update objects queued at start
    --bot-username U   (default omnibus_test_bot), --bot-id N (default 123456)

Control (fakelib's /_control, plus)
-----------------------------------
    POST /_control/updates   one Update object, a JSON array of them, or
         JSON lines: queued (an update without update_id gets the next one;
         ids must grow) and any held long poll is woken.
    GET  /_control/updates   the queue (not yet confirmed), as a JSON array.
    GET  /_control/sent      the messages sendMessage accepted.
    /_control/state adds {"queued": N, "confirmed_offset": N,
         "next_update_id": N, "sent": N, "polls_held": N}.
Failures and 429s come from fakelib's {"fail": ...} and {"rate_limit": N,
"retry_after": S}; the 429 body is Telegram's:
    {"ok": false, "error_code": 429, "description": "Too Many Requests:
     retry after S", "parameters": {"retry_after": S}}
Every request is recorded (fakelib's record shape; the query holds the
parameters of a GET, the body those of a POST).
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakelib  # noqa: E402

DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

UPDATE_TYPES = (
    "message", "edited_message", "channel_post", "edited_channel_post", "business_message",
    "callback_query", "inline_query", "my_chat_member", "chat_member", "chat_join_request",
    "message_reaction", "poll", "poll_answer", "shipping_query", "pre_checkout_query",
)


def update_type(u):
    for k in u:
        if k != "update_id":
            return k
    return None


def params_of(handler, query, body):
    """A method's parameters: the query, then a JSON or form body over it."""
    p = dict(query)
    if body:
        ctype = (handler.header("Content-Type") or "").lower()
        if "json" in ctype:
            obj = handler.json(body)
            if isinstance(obj, dict):
                p.update(obj)
        else:
            p.update(handler.form(body))
    return p


def int_param(p, name, default):
    v = p.get(name, default)
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


class Handler(fakelib.FakeHandler):
    name = "fake_telegram"

    # Telegram's error shapes.
    def error_body(self, status, message):
        desc = DESCRIPTIONS.get(status, message)
        return {"ok": False, "error_code": status, "description": desc}

    def rate_limit_body(self, retry_after):
        return {"ok": False, "error_code": 429,
                "description": "Too Many Requests: retry after %d" % retry_after,
                "parameters": {"retry_after": retry_after}}

    def bot(self):
        a = self.server.args
        return {"id": a.bot_id, "is_bot": True, "first_name": "Omnibus Test",
                "username": a.bot_username}

    def route(self, method, path, query, body):
        parts = path.split("/")
        if len(parts) != 3 or not parts[1].startswith("bot") or parts[2] == "":
            return 404, self.error_body(404, "Not Found")
        token, name = parts[1][3:], parts[2]
        if token != self.server.args.token:
            return 401, self.error_body(401, "Unauthorized")
        p = params_of(self, query, body)
        fn = getattr(self, "m_" + name, None)
        if fn is None:
            return 404, self.error_body(404, "Not Found")
        return fn(p)

    # -- methods ----------------------------------------------------------

    def m_getMe(self, p):
        return 200, {"ok": True, "result": self.bot()}

    def m_getUpdates(self, p):
        srv = self.server
        offset = int_param(p, "offset", 0)
        limit = int_param(p, "limit", 100)
        timeout = int_param(p, "timeout", 0)
        if offset is None or limit is None or timeout is None:
            return 400, self.error_body(400, "Bad Request: wrong parameter")
        limit = max(1, min(100, limit))
        allowed = p.get("allowed_updates")
        if isinstance(allowed, str):
            try:
                allowed = json.loads(allowed) if allowed else None
            except ValueError:
                return 400, self.error_body(400, "Bad Request: can't parse allowed_updates")
        if allowed is not None and not isinstance(allowed, list):
            return 400, self.error_body(400, "Bad Request: allowed_updates must be an array")
        deadline = time.monotonic() + max(0, timeout)
        with srv.cond:
            d = srv.data
            d["poll_gen"] += 1
            me = d["poll_gen"]
            srv.cond.notify_all()       # a held poll is ended by this one
            if offset < 0:
                keep = -offset
                d["queue"] = d["queue"][-keep:] if keep else []
            elif offset > 0:
                d["queue"] = [u for u in d["queue"] if u["update_id"] >= offset]
                d["confirmed"] = max(d["confirmed"], offset)
            d["held"] += 1
            try:
                while True:
                    if d["poll_gen"] != me:
                        return 409, self.error_body(409, "Conflict")
                    lo = offset if offset > 0 else 0
                    out = [u for u in d["queue"] if u["update_id"] >= lo
                           and (not allowed or update_type(u) in allowed)]
                    left = deadline - time.monotonic()
                    if out or left <= 0:
                        return 200, {"ok": True, "result": out[:limit]}
                    srv.cond.wait(min(left, 0.5))
            finally:
                d["held"] -= 1

    def m_sendMessage(self, p):
        chat = p.get("chat_id")
        text = p.get("text")
        if chat in (None, ""):
            return 400, self.error_body(400, "Bad Request: chat not found")
        if not text:
            return 400, {"ok": False, "error_code": 400,
                         "description": "Bad Request: message text is empty"}
        try:
            chat_id = int(chat)
        except (TypeError, ValueError):
            chat_id = chat
        with self.server.lock:
            d = self.server.data
            d["message_id"] += 1
            msg = {"message_id": d["message_id"], "from": self.bot(),
                   "chat": {"id": chat_id}, "date": int(time.time()), "text": text}
            d["sent"].append(msg)
        return 200, {"ok": True, "result": msg}

    def m_getFile(self, p):
        fid = p.get("file_id")
        if not fid:
            return 400, self.error_body(400, "Bad Request: invalid file_id")
        return 200, {"ok": True, "result": {"file_id": fid, "file_unique_id": "u" + fid[:8],
                                            "file_size": 0, "file_path": "files/" + fid}}

    # -- control ----------------------------------------------------------

    def control(self, method, name, body):
        srv = self.server
        if name == "updates" and method == "GET":
            with srv.lock:
                return 200, list(srv.data["queue"])
        if name == "sent" and method == "GET":
            with srv.lock:
                return 200, list(srv.data["sent"])
        if name == "updates" and method == "POST":
            try:
                ups = parse_updates(body.decode("utf-8"))
            except ValueError as ex:
                return 400, {"error": str(ex)}
            with srv.cond:
                try:
                    n = queue(srv.data, ups)
                except ValueError as ex:
                    return 400, {"error": str(ex)}
                srv.cond.notify_all()
            return 200, {"queued": n, "next_update_id": srv.data["next_id"]}
        return None

    def extra_state(self):
        with self.server.lock:
            d = self.server.data
            return {"queued": len(d["queue"]), "confirmed_offset": d["confirmed"],
                    "next_update_id": d["next_id"], "sent": len(d["sent"]),
                    "polls_held": d["held"]}


def parse_updates(text):
    """One object, an array, or JSON lines -> a list of dicts."""
    text = text.strip()
    if not text:
        return []
    try:
        v = json.loads(text)
        ups = v if isinstance(v, list) else [v]
    except ValueError:
        ups = [json.loads(line) for line in text.splitlines() if line.strip()]
    for u in ups:
        if not isinstance(u, dict):
            raise ValueError("an update must be a JSON object")
    return ups


def queue(d, ups):
    """Appends updates, numbering those without update_id (ids must grow).
    Returns how many."""
    for u in ups:
        if "update_id" not in u:
            u = dict(u, update_id=d["next_id"])
        uid = int(u["update_id"])
        if d["last_id"] is not None and uid <= d["last_id"]:
            raise ValueError("update_id %d is not above the last one (%d)" % (uid, d["last_id"]))
        d["queue"].append(u)
        d["last_id"] = uid
        d["next_id"] = uid + 1
    return len(ups)


def add_args(p):
    p.add_argument("--token", default="123456:TEST-TOKEN", help="the bot token")
    p.add_argument("--updates", help="JSON lines of updates queued at start")
    p.add_argument("--bot-username", default="omnibus_test_bot")
    p.add_argument("--bot-id", type=int, default=123456)
    p.add_argument("--first-update-id", type=int, default=100000001,
                   help="update_id given to the first update that has none")


def setup(srv):
    srv.data.update(queue=[], next_id=srv.args.first_update_id, last_id=None, confirmed=0, poll_gen=0,
                    held=0, sent=[], message_id=0)
    if srv.args.updates:
        with open(srv.args.updates, encoding="utf-8") as fp:
            queue(srv.data, parse_updates(fp.read()))


if __name__ == "__main__":
    sys.exit(fakelib.main(Handler, "Fake Telegram Bot API", add_args=add_args, setup=setup))
