#!/usr/bin/env python3
"""fake_imap -- a real IMAP4rev1 server (RFC 3501) on a socket, enough for
libcurl's imap:// and for omni-ingest-mail: one mailbox, INBOX, loaded from
a directory of .eml files (--mailbox DIR, in name order, UIDs 1..N), with a
UIDVALIDITY (--uidvalidity) and UIDs that only grow.

Commands: CAPABILITY, NOOP, LOGIN, AUTHENTICATE PLAIN (with or without an
initial response), LIST, LSUB, SELECT, EXAMINE, STATUS, SEARCH / UID SEARCH
(ALL, UID set, sequence set, SEEN, UNSEEN, combined), FETCH / UID FETCH
(UID, FLAGS, RFC822.SIZE, INTERNALDATE, RFC822, BODY[], BODY.PEEK[],
BODY[]<partial>), STORE / UID STORE (FLAGS, +FLAGS, -FLAGS, .SILENT),
EXPUNGE, CLOSE, UNSELECT, LOGOUT. No TLS (tests are on loopback).

As a real server: "n:*" means n up to the highest UID, and when n is above
it, the highest one (RFC 3501 9); BODY[] sets \\Seen and BODY.PEEK[] does
not; a selected session learns of new mail as "* N EXISTS" on its next
command; when UIDVALIDITY changes under a selected session, it gets
"* BYE" and is closed.

With --user/--password, LOGIN and AUTHENTICATE check them (NO
[AUTHENTICATIONFAILED] otherwise); without, any login is taken.

Control (HTTP, on --control-port / --control-ready, fakelib's conventions)
-------------------------------------------------------------------------
    POST /_control/append        the body is one raw RFC 5322 message:
                                 appended with the next UID; answers
                                 {"uid": N, "uidnext": N+1}
    POST /_control/uidvalidity   {"uidvalidity": V} (default: the old one
                                 + 1): the mailbox is re-created -- same
                                 messages, renumbered from UID 1, flags
                                 cleared, under the new UIDVALIDITY
    POST /_control/expunge       {"uid": N}: removes that message
    POST /_control  fakelib's {"fail": STATUS, "count": N, "path": "FETCH"}
                                 answers the next N commands (whose line
                                 contains path, when given) "NO [UNAVAILABLE]";
                                 {"delay_ms": D} delays every answer;
                                 {"rate_limit": N} answers "NO [LIMIT]".
    GET  /_control/state adds {"uidvalidity", "uidnext", "exists", "uids",
                                 "seen": [uids with \\Seen], "sessions"}.

Records: one JSON line per command:
    {"method": "IMAP", "session": N, "tag": "A003", "command": "UID FETCH",
     "line": "A003 UID FETCH 3 BODY[]", "status": "OK"|"NO"|"BAD", "t": ...}
(LOGIN and AUTHENTICATE lines have the secret replaced by "***").
"""
import base64
import itertools
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakelib  # noqa: E402

CAPS = "IMAP4rev1 AUTH=PLAIN UNSELECT"
SESSION_IDS = itertools.count(1)


class Msg:
    """One message of the mailbox."""

    def __init__(self, uid, raw, when):
        self.uid = uid
        self.raw = raw
        self.flags = set()
        self.when = when


class Mailbox:
    """INBOX: messages in UID order, UIDVALIDITY, UIDNEXT."""

    def __init__(self, uidvalidity):
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.msgs = []

    def append(self, raw, when=None):
        m = Msg(self.uidnext, raw, when or time.time())
        self.uidnext += 1
        self.msgs.append(m)
        return m

    def recreate(self, uidvalidity):
        old = self.msgs
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.msgs = []
        for m in old:
            self.append(m.raw, m.when)


def tokens(s):
    """Splits an IMAP argument string: atoms, "quoted" strings and (lists)
    (kept whole, with their parentheses)."""
    out = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == " ":
            i += 1
        elif c == '"':
            j = i + 1
            buf = []
            while j < len(s) and s[j] != '"':
                if s[j] == "\\" and j + 1 < len(s):
                    j += 1
                buf.append(s[j])
                j += 1
            out.append("".join(buf))
            i = j + 1
        elif c == "(":
            depth = 0
            j = i
            while j < len(s):
                if s[j] == "(":
                    depth += 1
                elif s[j] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            out.append(s[i:j + 1])
            i = j + 1
        else:
            j = s.find(" ", i)
            j = len(s) if j < 0 else j
            # an atom may hold [..] with spaces inside (BODY[HEADER.FIELDS (A B)])
            k = s.find("[", i, j)
            if k >= 0:
                e = s.find("]", k)
                if e >= 0:
                    j = s.find(" ", e)
                    j = len(s) if j < 0 else j
            out.append(s[i:j])
            i = j
    return out


def parse_set(spec, highest):
    """A sequence set ("1,3:5,7:*") as a predicate on numbers."""
    ranges = []
    for part in spec.split(","):
        if ":" in part:
            a, b = part.split(":", 1)
            a = highest if a == "*" else int(a)
            b = highest if b == "*" else int(b)
            ranges.append((min(a, b), max(a, b)))
        else:
            n = highest if part == "*" else int(part)
            ranges.append((n, n))
    return lambda n: any(lo <= n <= hi for lo, hi in ranges)


class Handler(fakelib.FakeTCPHandler):
    name = "fake_imap"
    timeout = 120

    def setup(self):
        super().setup()
        self.session = next(SESSION_IDS)
        self.user = None
        self.selected = False
        self.readonly = False
        self.known_exists = 0
        self.known_validity = None
        with self.server.lock:
            self.server.data["sessions"] += 1

    def finish(self):
        with self.server.lock:
            self.server.data["sessions"] -= 1
        try:
            super().finish()
        except OSError:
            pass

    @property
    def box(self):
        return self.server.data["box"]

    def send(self, line):
        self.write(line + "\r\n")

    def handle(self):
        self.send("* OK [CAPABILITY %s] fake_imap ready" % CAPS)
        while True:
            try:
                line = self.readline()
            except OSError:
                return
            if line is None:
                return
            text = line.decode("utf-8", "replace")
            if not text.strip():
                continue
            parts = text.split(" ", 2)
            tag = parts[0]
            if len(parts) < 2:
                self.send("%s BAD missing command" % tag)
                continue
            verb = parts[1].upper()
            rest = parts[2] if len(parts) > 2 else ""
            cmd = verb
            if verb == "UID" and rest:
                sub = rest.split(" ", 1)
                cmd = "UID " + sub[0].upper()
                rest = sub[1] if len(sub) > 1 else ""
            shown = text
            if verb in ("LOGIN", "AUTHENTICATE"):
                shown = "%s %s ***" % (tag, verb)
            self.ctl.count(cmd)
            self.ctl.delay()
            fate = self.ctl.take(text)
            if fate is not None:
                why = "[LIMIT] too many commands" if fate[0] == "rate_limit" else \
                    "[UNAVAILABLE] injected failure (%s)" % fate[1]
                self.send("%s NO %s" % (tag, why))
                self.rec(tag, cmd, shown, "NO")
                continue
            try:
                status = self.dispatch(tag, cmd, rest)
            except (ValueError, IndexError) as ex:
                self.send("%s BAD %s" % (tag, ex or "syntax error"))
                status = "BAD"
            except OSError:
                return
            self.rec(tag, cmd, shown, status)
            if status == "BYE":
                return

    def rec(self, tag, cmd, line, status):
        self.record({"method": "IMAP", "session": self.session, "tag": tag, "command": cmd,
                     "line": line, "status": status})

    def dispatch(self, tag, cmd, rest):
        fn = {
            "CAPABILITY": self.c_capability, "NOOP": self.c_noop, "LOGOUT": self.c_logout,
            "LOGIN": self.c_login, "AUTHENTICATE": self.c_authenticate, "LIST": self.c_list,
            "LSUB": self.c_list, "SELECT": self.c_select, "EXAMINE": self.c_select,
            "STATUS": self.c_status, "SEARCH": self.c_search, "UID SEARCH": self.c_search,
            "FETCH": self.c_fetch, "UID FETCH": self.c_fetch, "STORE": self.c_store,
            "UID STORE": self.c_store, "EXPUNGE": self.c_expunge, "CLOSE": self.c_close,
            "UNSELECT": self.c_close, "CHECK": self.c_noop,
        }.get(cmd)
        if fn is None:
            self.send("%s BAD unknown command %s" % (tag, cmd))
            return "BAD"
        authed = cmd in ("CAPABILITY", "NOOP", "LOGOUT", "LOGIN", "AUTHENTICATE")
        if not authed and self.user is None:
            self.send("%s NO not authenticated" % tag)
            return "NO"
        needs_box = cmd in ("SEARCH", "UID SEARCH", "FETCH", "UID FETCH", "STORE", "UID STORE",
                            "EXPUNGE", "CLOSE", "UNSELECT")
        if needs_box and not self.selected:
            self.send("%s NO no mailbox selected" % tag)
            return "NO"
        if self.selected and not self.untagged_updates():
            return "BYE"
        return fn(tag, cmd, rest)

    def untagged_updates(self):
        """New mail and a changed UIDVALIDITY, as a server tells a selected
        session. Returns False when the session is closed."""
        with self.server.lock:
            validity = self.box.uidvalidity
            exists = len(self.box.msgs)
        if validity != self.known_validity:
            self.send("* BYE mailbox UIDVALIDITY changed")
            self.selected = False
            return False
        if exists != self.known_exists:
            self.send("* %d EXISTS" % exists)
            self.known_exists = exists
        return True

    # -- commands ----------------------------------------------------------

    def c_capability(self, tag, cmd, rest):
        self.send("* CAPABILITY %s" % CAPS)
        self.send("%s OK CAPABILITY completed" % tag)
        return "OK"

    def c_noop(self, tag, cmd, rest):
        self.send("%s OK %s completed" % (tag, cmd))
        return "OK"

    def c_logout(self, tag, cmd, rest):
        self.send("* BYE fake_imap logging out")
        self.send("%s OK LOGOUT completed" % tag)
        return "BYE"

    def check_login(self, user, password):
        a = self.server.args
        if a.user is not None and (user != a.user or password != (a.password or "")):
            return False
        self.user = user
        return True

    def c_login(self, tag, cmd, rest):
        t = tokens(rest)
        if len(t) != 2:
            raise ValueError("LOGIN needs a user and a password")
        if not self.check_login(t[0], t[1]):
            self.send("%s NO [AUTHENTICATIONFAILED] invalid credentials" % tag)
            return "NO"
        self.send("%s OK [CAPABILITY %s] LOGIN completed" % (tag, CAPS))
        return "OK"

    def c_authenticate(self, tag, cmd, rest):
        t = rest.split(" ")
        if not t or t[0].upper() != "PLAIN":
            self.send("%s NO unsupported mechanism" % tag)
            return "NO"
        if len(t) > 1 and t[1] != "":
            resp = t[1]
        else:
            self.send("+ ")
            line = self.readline()
            if line is None:
                return "BYE"
            resp = line.decode("ascii", "replace").strip()
        if resp == "*":
            self.send("%s BAD authentication cancelled" % tag)
            return "BAD"
        try:
            parts = base64.b64decode(resp, validate=True).decode("utf-8").split("\0")
        except (ValueError, UnicodeDecodeError):
            self.send("%s BAD invalid base64" % tag)
            return "BAD"
        if len(parts) != 3 or not self.check_login(parts[1], parts[2]):
            self.send("%s NO [AUTHENTICATIONFAILED] invalid credentials" % tag)
            return "NO"
        self.send("%s OK [CAPABILITY %s] AUTHENTICATE completed" % (tag, CAPS))
        return "OK"

    def c_list(self, tag, cmd, rest):
        self.send('* %s (\\HasNoChildren) "/" INBOX' % cmd)
        self.send("%s OK %s completed" % (tag, cmd))
        return "OK"

    def c_select(self, tag, cmd, rest):
        t = tokens(rest)
        if not t or t[0].upper() != "INBOX":
            self.selected = False
            self.send("%s NO [NONEXISTENT] no such mailbox" % tag)
            return "NO"
        with self.server.lock:
            box = self.box
            exists = len(box.msgs)
            unseen = next((i + 1 for i, m in enumerate(box.msgs) if "\\Seen" not in m.flags), None)
            validity, uidnext = box.uidvalidity, box.uidnext
        self.selected = True
        self.readonly = cmd == "EXAMINE"
        self.known_exists = exists
        self.known_validity = validity
        self.send("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)")
        self.send("* %d EXISTS" % exists)
        self.send("* 0 RECENT")
        if unseen is not None:
            self.send("* OK [UNSEEN %d] first unseen" % unseen)
        self.send("* OK [UIDVALIDITY %d] UIDs valid" % validity)
        self.send("* OK [UIDNEXT %d] predicted next UID" % uidnext)
        self.send("* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] ok")
        self.send("%s OK [%s] %s completed" % (tag, "READ-ONLY" if self.readonly else "READ-WRITE", cmd))
        return "OK"

    def c_status(self, tag, cmd, rest):
        with self.server.lock:
            box = self.box
            self.send("* STATUS INBOX (MESSAGES %d UIDNEXT %d UIDVALIDITY %d UNSEEN %d)" % (
                len(box.msgs), box.uidnext, box.uidvalidity,
                sum(1 for m in box.msgs if "\\Seen" not in m.flags)))
        self.send("%s OK STATUS completed" % tag)
        return "OK"

    def matching(self, criteria, msgs):
        """Indexes (0-based) of msgs matching search criteria tokens."""
        highest_uid = msgs[-1].uid if msgs else 0
        preds = []
        i = 0
        while i < len(criteria):
            c = criteria[i].upper()
            if c == "ALL":
                pass
            elif c == "UID":
                i += 1
                f = parse_set(criteria[i], highest_uid)
                preds.append(lambda k, m, f=f: f(m.uid))
            elif c == "SEEN":
                preds.append(lambda k, m: "\\Seen" in m.flags)
            elif c == "UNSEEN":
                preds.append(lambda k, m: "\\Seen" not in m.flags)
            elif c in ("CHARSET",):
                i += 1
            elif re.match(r"^[0-9*][0-9:*,]*$", c):
                f = parse_set(c, len(msgs))
                preds.append(lambda k, m, f=f: f(k + 1))
            else:
                raise ValueError("unsupported search key %s" % c)
            i += 1
        return [k for k, m in enumerate(msgs) if all(p(k, m) for p in preds)]

    def c_search(self, tag, cmd, rest):
        with self.server.lock:
            msgs = list(self.box.msgs)
        hits = self.matching(tokens(rest), msgs)
        by_uid = cmd.startswith("UID")
        nums = [str(msgs[k].uid if by_uid else k + 1) for k in hits]
        self.send("* SEARCH" + ("" if not nums else " " + " ".join(nums)))
        self.send("%s OK %s completed" % (tag, cmd))
        return "OK"

    def targets(self, cmd, spec, msgs):
        by_uid = cmd.startswith("UID")
        if by_uid:
            f = parse_set(spec, msgs[-1].uid if msgs else 0)
            return [k for k, m in enumerate(msgs) if f(m.uid)]
        f = parse_set(spec, len(msgs))
        return [k for k in range(len(msgs)) if f(k + 1)]

    def c_fetch(self, tag, cmd, rest):
        t = tokens(rest)
        if len(t) < 2:
            raise ValueError("FETCH needs a set and items")
        items = t[1]
        if items.startswith("("):
            items = items[1:-1]
        items = tokens(items)
        with self.server.lock:
            msgs = list(self.box.msgs)
        for k in self.targets(cmd, t[0], msgs):
            m = msgs[k]
            out = []
            literal = None
            names = [x.upper() for x in items]
            if cmd.startswith("UID") and "UID" not in names:
                names.insert(0, "UID")
            for it in names:
                if it == "UID":
                    out.append("UID %d" % m.uid)
                elif it == "FLAGS":
                    out.append("FLAGS (%s)" % " ".join(sorted(m.flags)))
                elif it == "RFC822.SIZE":
                    out.append("RFC822.SIZE %d" % len(m.raw))
                elif it == "INTERNALDATE":
                    out.append('INTERNALDATE "%s"' % time.strftime(
                        "%d-%b-%Y %H:%M:%S +0000", time.gmtime(m.when)))
                elif it in ("ALL", "FAST", "FULL"):
                    out.append("FLAGS (%s) RFC822.SIZE %d" % (" ".join(sorted(m.flags)), len(m.raw)))
                elif it == "RFC822" or it.startswith("BODY[]") or it.startswith("BODY.PEEK[]"):
                    data = m.raw
                    mm = re.search(r"<(\d+)(?:\.(\d+))?>$", it)
                    name = "RFC822" if it == "RFC822" else "BODY[]"
                    if mm:
                        start = int(mm.group(1))
                        data = data[start:start + int(mm.group(2))] if mm.group(2) else data[start:]
                        name = "BODY[]<%d>" % start
                    literal = (name, data)
                    if not it.startswith("BODY.PEEK") and not self.readonly:
                        with self.server.lock:
                            m.flags.add("\\Seen")
                else:
                    raise ValueError("unsupported fetch item %s" % it)
            head = "* %d FETCH (%s" % (k + 1, " ".join(out))
            if literal is not None:
                sep = " " if out else ""
                self.write(("%s%s%s {%d}\r\n" % (head, sep, literal[0], len(literal[1]))).encode()
                           + literal[1] + b")\r\n")
            else:
                self.send(head + ")")
        self.send("%s OK %s completed" % (tag, cmd))
        return "OK"

    def c_store(self, tag, cmd, rest):
        t = tokens(rest)
        if len(t) < 3:
            raise ValueError("STORE needs a set, an item and flags")
        what = t[1].upper()
        flags = set(t[2].strip("()").split())
        silent = what.endswith(".SILENT")
        what = what.replace(".SILENT", "")
        with self.server.lock:
            msgs = list(self.box.msgs)
            hits = self.targets(cmd, t[0], msgs)
            for k in hits:
                m = msgs[k]
                if what == "FLAGS":
                    m.flags = set(flags)
                elif what == "+FLAGS":
                    m.flags |= flags
                elif what == "-FLAGS":
                    m.flags -= flags
                else:
                    raise ValueError("bad STORE item")
        if not silent:
            for k in hits:
                self.send("* %d FETCH (UID %d FLAGS (%s))" % (k + 1, msgs[k].uid,
                                                              " ".join(sorted(msgs[k].flags))))
        self.send("%s OK %s completed" % (tag, cmd))
        return "OK"

    def c_expunge(self, tag, cmd, rest):
        with self.server.lock:
            box = self.box
            gone = [k for k, m in enumerate(box.msgs) if "\\Deleted" in m.flags]
            for k in reversed(gone):
                del box.msgs[k]
        for k in reversed(gone):
            self.send("* %d EXPUNGE" % (k + 1))
        self.known_exists -= len(gone)
        self.send("%s OK EXPUNGE completed" % tag)
        return "OK"

    def c_close(self, tag, cmd, rest):
        self.selected = False
        self.send("%s OK %s completed" % (tag, cmd))
        return "OK"

    # -- control -------------------------------------------------------------

    @classmethod
    def control(cls, server, method, name, body):
        if method != "POST":
            return None
        with server.lock:
            box = server.data["box"]
            if name == "append":
                if not body:
                    return 400, {"error": "the body must be a message"}
                m = box.append(body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
                return 200, {"uid": m.uid, "uidnext": box.uidnext}
            obj = json.loads(body.decode("utf-8") or "{}") if body else {}
            if name == "uidvalidity":
                v = int(obj.get("uidvalidity", box.uidvalidity + 1))
                box.recreate(v)
                return 200, {"uidvalidity": v, "uidnext": box.uidnext}
            if name == "expunge":
                uid = int(obj["uid"])
                box.msgs = [m for m in box.msgs if m.uid != uid]
                return 200, {"exists": len(box.msgs)}
        return None

    @classmethod
    def extra_state(cls, server):
        with server.lock:
            box = server.data["box"]
            return {"uidvalidity": box.uidvalidity, "uidnext": box.uidnext,
                    "exists": len(box.msgs), "uids": [m.uid for m in box.msgs],
                    "seen": [m.uid for m in box.msgs if "\\Seen" in m.flags],
                    "sessions": server.data["sessions"]}


def add_args(p):
    p.add_argument("--mailbox", help="directory of .eml files loaded into INBOX (name order)")
    p.add_argument("--uidvalidity", type=int, default=1700000000, help="UIDVALIDITY of INBOX")
    p.add_argument("--user", help="the only user accepted (default: any)")
    p.add_argument("--password", help="its password")


def setup(srv):
    box = Mailbox(srv.args.uidvalidity)
    if srv.args.mailbox:
        for name in sorted(os.listdir(srv.args.mailbox)):
            if name.endswith(".eml"):
                with open(os.path.join(srv.args.mailbox, name), "rb") as fp:
                    raw = fp.read()
                # IMAP hands out messages with CRLF line ends.
                raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                box.append(raw, os.path.getmtime(os.path.join(srv.args.mailbox, name)))
    srv.data["box"] = box
    srv.data["sessions"] = 0


if __name__ == "__main__":
    sys.exit(fakelib.main_tcp(Handler, "Fake IMAP4rev1 server", add_args=add_args, setup=setup))
