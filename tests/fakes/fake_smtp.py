#!/usr/bin/env python3
"""fake_smtp -- a real SMTP server (RFC 5321) on a socket, for omni-send's
e-mail tests: EHLO/HELO, optional AUTH PLAIN/LOGIN (--user/--password),
MAIL FROM, RCPT TO, DATA with dot-stuffing undone, RSET, NOOP, QUIT.
No STARTTLS (tests are on loopback).

Each DATA transaction is recorded as one JSON line:

    {"method": "SMTP", "helo": "client", "auth": "user" | null,
     "mail_from": "a@x", "rcpt_to": ["b@y"],
     "data": "raw message, CRLF line ends, dots unstuffed",
     "data_encoding": "text"|"base64",
     "headers": {"message-id": "<...>", "in-reply-to": "<...>", ...},
     "status": 250, "t": ...}

headers are the message's header fields, names lower-cased, unfolded
(the first of a repeated field). status is what DATA was answered.

Failures: --fail-code CODE answers CODE (e.g. 451, 550) to the end of DATA
of the first --fail-count messages (default: every one); POST /_control
{"fail": CODE, "count": N} on the control port does the same for the next N;
{"rate_limit": N} answers "451 4.7.1" for the next N; {"delay_ms": D}
sleeps before each DATA answer. --reject-rcpt ADDR answers 550 to RCPT TO
for that address. Conventions (--port, --ready, --record, --control-port,
--control-ready) are fakelib's.
"""
import base64
import email.parser
import email.policy
import os
import re
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakelib  # noqa: E402

ADDR = re.compile(r"^(?:MAIL FROM|RCPT TO):\s*<([^>]*)>(.*)$", re.I)

TEXT = {
    421: "4.3.2 Service not available, closing transmission channel",
    450: "4.2.0 Mailbox unavailable",
    451: "4.3.0 Requested action aborted: local error in processing",
    452: "4.3.1 Insufficient system storage",
    550: "5.7.1 Message rejected",
    552: "5.3.4 Message size exceeds fixed limit",
    554: "5.6.0 Transaction failed",
}


def parse_headers(raw):
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    out = {}
    for k, v in msg.items():
        k = k.lower()
        if k not in out:
            out[k] = re.sub(r"\r?\n[ \t]+", " ", str(v)).strip()
    return out


class Handler(fakelib.FakeTCPHandler):
    name = "fake_smtp"
    fail_lock = threading.Lock()
    fail_left = None

    def reply(self, code, text):
        self.write("%d %s\r\n" % (code, text))

    def handle(self):
        args = self.server.args
        self.helo = None
        self.user = None
        self.reset()
        self.reply(220, "fake_smtp ESMTP ready")
        while True:
            line = self.readline()
            if line is None:
                return
            text = line.decode("utf-8", "replace")
            verb = text.split(" ", 1)[0].upper()
            fakelib.log("C: %s", text)
            if verb == "EHLO":
                self.helo = text[5:].strip()
                self.reset()
                ext = ["fake_smtp", "8BITMIME", "SIZE 10485760", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
                if args.user:
                    ext.append("AUTH PLAIN LOGIN")
                ext.append("HELP")
                for i, e in enumerate(ext):
                    self.write("250%s%s\r\n" % (" " if i == len(ext) - 1 else "-", e))
            elif verb == "HELO":
                self.helo = text[5:].strip()
                self.reset()
                self.reply(250, "fake_smtp")
            elif verb == "AUTH":
                self.auth(text)
            elif verb == "MAIL":
                self.mail(text)
            elif verb == "RCPT":
                self.rcpt(text)
            elif verb == "DATA":
                self.data()
            elif verb == "RSET":
                self.reset()
                self.reply(250, "2.0.0 Ok")
            elif verb == "NOOP":
                self.reply(250, "2.0.0 Ok")
            elif verb == "VRFY":
                self.reply(252, "2.0.0 Cannot VRFY user")
            elif verb == "QUIT":
                self.reply(221, "2.0.0 Bye")
                return
            else:
                self.reply(502, "5.5.2 Error: command not recognized")

    def reset(self):
        self.mail_from = None
        self.rcpt_to = []

    def auth(self, text):
        args = self.server.args
        parts = text.split()
        if not args.user:
            self.reply(503, "5.5.1 Error: authentication not enabled")
            return
        mech = parts[1].upper() if len(parts) > 1 else ""
        try:
            if mech == "PLAIN":
                if len(parts) > 2:
                    blob = parts[2]
                else:
                    self.write("334 \r\n")
                    blob = (self.readline() or b"").decode()
                _, user, pw = base64.b64decode(blob).decode("utf-8").split("\0")
            elif mech == "LOGIN":
                self.write("334 VXNlcm5hbWU6\r\n")
                user = base64.b64decode(self.readline() or b"").decode("utf-8")
                self.write("334 UGFzc3dvcmQ6\r\n")
                pw = base64.b64decode(self.readline() or b"").decode("utf-8")
            else:
                self.reply(504, "5.5.4 Unrecognized authentication type")
                return
        except (ValueError, UnicodeDecodeError):
            self.reply(501, "5.5.2 Cannot decode response")
            return
        if user == args.user and pw == (args.password or ""):
            self.user = user
            self.reply(235, "2.7.0 Authentication successful")
        else:
            self.reply(535, "5.7.8 Error: authentication failed")

    def mail(self, text):
        m = ADDR.match(text)
        if m is None or not text.upper().startswith("MAIL FROM"):
            self.reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
            return
        if self.server.args.user and self.user is None:
            self.reply(530, "5.7.0 Authentication required")
            return
        if self.mail_from is not None:
            self.reply(503, "5.5.1 Error: nested MAIL command")
            return
        self.mail_from = m.group(1)
        self.reply(250, "2.1.0 Ok")

    def rcpt(self, text):
        m = ADDR.match(text)
        if m is None or not text.upper().startswith("RCPT TO"):
            self.reply(501, "5.5.4 Syntax: RCPT TO:<address>")
            return
        if self.mail_from is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
            return
        if m.group(1) == self.server.args.reject_rcpt:
            self.reply(550, "5.1.1 <%s>: Recipient address rejected: User unknown" % m.group(1))
            return
        self.rcpt_to.append(m.group(1))
        self.reply(250, "2.1.5 Ok")

    def data(self):
        if not self.rcpt_to:
            self.reply(503, "5.5.1 Error: need RCPT command")
            return
        self.reply(354, "End data with <CR><LF>.<CR><LF>")
        lines = []
        while True:
            line = self.rfile.readline(1 << 20)
            if not line:
                return
            if line in (b".\r\n", b".\n"):
                break
            if line.startswith(b"."):
                line = line[1:]
            lines.append(line)
        raw = b"".join(lines)
        self.server.ctl.count("DATA")
        self.server.ctl.delay()
        code, text = 250, "2.0.0 Ok: queued as %s" % os.urandom(5).hex().upper()
        fate = self.server.ctl.take("DATA")
        if fate is not None and fate[0] == "rate_limit":
            code, text = 451, "4.7.1 Rate limited, try again in %d seconds" % fate[1]
        elif fate is not None:
            code, text = fate[1], TEXT.get(fate[1], "Injected failure")
        elif self.take_fail_code():
            code = self.server.args.fail_code
            text = TEXT.get(code, "Injected failure")
        rec = {"method": "SMTP", "helo": self.helo, "auth": self.user,
               "mail_from": self.mail_from, "rcpt_to": list(self.rcpt_to),
               "headers": parse_headers(raw), "status": code}
        enc = fakelib.body_fields(raw)
        rec["data"], rec["data_encoding"] = enc["body"], enc["body_encoding"]
        self.record(rec)
        self.reply(code, text)
        self.reset()

    def take_fail_code(self):
        args = self.server.args
        if not args.fail_code:
            return False
        with Handler.fail_lock:
            if Handler.fail_left is None:
                Handler.fail_left = args.fail_count
            if Handler.fail_left is None or Handler.fail_left < 0:
                return True
            if Handler.fail_left == 0:
                return False
            Handler.fail_left -= 1
            return True


def add_args(p):
    p.add_argument("--user", help="require AUTH with this user")
    p.add_argument("--password", help="the password for --user")
    p.add_argument("--fail-code", type=int, help="answer this code to DATA (451, 550, ...)")
    p.add_argument("--fail-count", type=int, default=-1,
                   help="only for the first N messages (default: all)")
    p.add_argument("--reject-rcpt", help="answer 550 to RCPT TO for this address")


if __name__ == "__main__":
    sys.exit(fakelib.main_tcp(Handler, "Fake SMTP server", add_args))
