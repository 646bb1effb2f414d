"""fakelib -- the shared part of omnibus's fake channel servers (tests/fakes).

Each fake is one script, tests/fakes/fake_PROVIDER.py, standard library only
(python3, no pip), that imports this module and speaks one provider's real
wire format on 127.0.0.1. Integration tests start fakes as real processes
and point the tools' base URLs at them.

Conventions every fake follows
==============================

Command line (parsed by fakelib.main / fakelib.main_tcp; a fake may add its
own options through the `add_args` hook):

    --port N         TCP port on 127.0.0.1; 0 (the default) = any free port
    --ready FILE     once listening, the chosen port is written to FILE
                     (one line, "PORT\\n", written to FILE.tmp and renamed,
                     so `test -s FILE` never sees half a number)
    --record FILE    every request is appended to FILE as one JSON line,
                     flushed at once (see "Records" below)
    --control-port N, --control-ready FILE
                     TCP (non-HTTP) fakes only -- SMTP, IMAP -- where control
                     cannot share the protocol's port: the HTTP control
                     server listens on its own port, written to this file.

A test waits for the ready file, then reads the port:

    python3 tests/fakes/fake_graph.py --ready $T/g.port --record $T/g.jsonl &
    wait_until 10 test -s $T/g.port; port=$(cat $T/g.port)

The fake runs until SIGTERM/SIGINT (exit 0). Logs go to stderr, one line per
event, prefixed with the fake's name; quiet unless --verbose.

Records (HTTP fakes)
--------------------
One JSON object per request received (control requests excluded), written
before the answer is sent -- so once a client has its answer the record is
in the file:

    {"method": "POST", "path": "/v19.0/123/messages",
     "query": {"k": "v"},          # last value wins for a repeated key
     "headers": {"authorization": "Bearer T", ...},   # names lower-cased
     "body": "...",                # the raw body as UTF-8 text, or base64
     "body_encoding": "text"|"base64",
     "status": 200,                # what the fake answered
     "response": {...},            # the answer's body (JSON value or text)
     "t": 1712345678.123}          # time received (for humans, not asserts)

Records of TCP fakes are one JSON object per protocol unit (an SMTP message,
an IMAP command); each fake documents its shape in its header, and always
includes "method" (e.g. "SMTP", "IMAP") so that a mixed file stays greppable.

Control (HTTP, on the fake's own port; on --control-port for TCP fakes)
-----------------------------------------------------------------------
    POST /_control  {"fail": STATUS, "count": N}
         the next N requests (default 1) answer STATUS with the provider's
         own error body (hook `error_body`). Optional "body" (a JSON value)
         replaces that body; optional "path" (substring) limits it to
         matching request paths.
    POST /_control  {"delay_ms": D}
         sleep D ms before answering every following request (0 = off).
    POST /_control  {"rate_limit": N, "retry_after": S}
         the next N requests answer 429 with "Retry-After: S" and the
         provider's own rate-limit body (hook `rate_limit_body`, e.g.
         Telegram's {"ok":false,"error_code":429,"parameters":{"retry_after":S}}).
    POST /_control  {"reset": true}
         clears fail / delay / rate_limit (records and counters are kept).
    Several keys may come in one object. The answer is the state below.
    GET  /_control/state
         {"requests": N, "by_path": {"/path": N}, "failed": N,
          "rate_limited": N, "fail_remaining": N, "rate_limit_remaining": N,
          "delay_ms": D, ...} plus what the fake adds (hook `extra_state`).
    Any other /_control/NAME is handed to the fake (hook `control`), e.g.
    fake_telegram's POST /_control/updates to queue updates for getUpdates.

Writing a fake
--------------
    import fakelib

    class Handler(fakelib.FakeHandler):
        name = "fake_graph"

        def route(self, method, path, query, body):
            # return (status, body) with body a dict/list (sent as JSON),
            # str or bytes; or (status, body, headers dict)
            return 200, {"ok": True}

        def error_body(self, status, message):       # provider's error shape
            return {"error": {"message": message, "code": status}}

        def rate_limit_body(self, retry_after):      # provider's 429 shape
            return {"error": {"message": "rate limited", "code": 4}}

    if __name__ == "__main__":
        fakelib.main(Handler, "Fake Graph API")

Inside route(), self.server.lock guards self.server.data (a dict the fake may
use for its own state) and self.server.cond (a Condition on that lock) lets
a long poll wait for news: call self.server.notify() after changing data.
The helpers self.form(body), self.json(body) parse request bodies, and
self.header(name) reads a request header (any case).

TCP fakes subclass FakeTCPHandler (a socketserver.StreamRequestHandler with
readline/write helpers, self.ctl for the shared control state and
self.record(obj)) and call fakelib.main_tcp(Handler, description).
"""

import argparse
import base64
import http.server
import json
import os
import signal
import socketserver
import sys
import threading
import time
import urllib.parse


class Control:
    """Failure injection and counters, shared by every connection of a fake."""

    def __init__(self):
        self.lock = threading.Lock()
        self.fail_status = 0
        self.fail_remaining = 0
        self.fail_body = None
        self.fail_path = None
        self.delay_ms = 0
        self.rate_limit_remaining = 0
        self.retry_after = 1
        self.requests = 0
        self.by_path = {}
        self.failed = 0
        self.rate_limited = 0

    def apply(self, obj):
        """Applies one POST /_control object. Raises ValueError when bad."""
        if not isinstance(obj, dict):
            raise ValueError("control body must be a JSON object")
        with self.lock:
            if obj.get("reset"):
                self.fail_status = 0
                self.fail_remaining = 0
                self.fail_body = None
                self.fail_path = None
                self.delay_ms = 0
                self.rate_limit_remaining = 0
            if "fail" in obj:
                self.fail_status = int(obj["fail"])
                self.fail_remaining = int(obj.get("count", 1))
                self.fail_body = obj.get("body")
                self.fail_path = obj.get("path")
            if "delay_ms" in obj:
                self.delay_ms = int(obj["delay_ms"])
            if "rate_limit" in obj:
                self.rate_limit_remaining = int(obj["rate_limit"])
                self.retry_after = int(obj.get("retry_after", 1))

    def count(self, path):
        """Counts one request (not a control one)."""
        with self.lock:
            self.requests += 1
            self.by_path[path] = self.by_path.get(path, 0) + 1

    def take(self, path=""):
        """Decides the fate of one request: ("rate_limit", retry_after),
        ("fail", status, body) or None; consumes one of the N."""
        with self.lock:
            if self.rate_limit_remaining > 0:
                self.rate_limit_remaining -= 1
                self.rate_limited += 1
                return ("rate_limit", self.retry_after)
            if self.fail_remaining > 0 and (not self.fail_path or self.fail_path in path):
                self.fail_remaining -= 1
                self.failed += 1
                return ("fail", self.fail_status, self.fail_body)
        return None

    def delay(self):
        """Sleeps the configured delay."""
        with self.lock:
            d = self.delay_ms
        if d > 0:
            time.sleep(d / 1000.0)

    def state(self):
        with self.lock:
            return {
                "requests": self.requests,
                "by_path": dict(self.by_path),
                "failed": self.failed,
                "rate_limited": self.rate_limited,
                "fail_remaining": self.fail_remaining,
                "fail_status": self.fail_status,
                "rate_limit_remaining": self.rate_limit_remaining,
                "retry_after": self.retry_after,
                "delay_ms": self.delay_ms,
            }


class Recorder:
    """Appends one JSON line per record to a file (or nowhere)."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.fp = open(path, "a", encoding="utf-8") if path else None

    def write(self, obj):
        if self.fp is None:
            return
        line = json.dumps(obj, ensure_ascii=False, sort_keys=True)
        with self.lock:
            self.fp.write(line + "\n")
            self.fp.flush()


def body_fields(raw):
    """{"body": ..., "body_encoding": ...} for raw bytes."""
    try:
        return {"body": raw.decode("utf-8"), "body_encoding": "text"}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(raw).decode("ascii"), "body_encoding": "base64"}


def write_ready(path, port):
    """Writes "PORT\\n" to path atomically."""
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as fp:
        fp.write("%d\n" % port)
    os.replace(tmp, path)


class _Log:
    verbose = False
    name = "fake"


def log(fmt, *args):
    """One line on stderr, when --verbose."""
    if _Log.verbose:
        sys.stderr.write("%s: %s\n" % (_Log.name, fmt % args if args else fmt))
        sys.stderr.flush()


def warn(fmt, *args):
    """One line on stderr, always."""
    sys.stderr.write("%s: %s\n" % (_Log.name, fmt % args if args else fmt))
    sys.stderr.flush()


def _handle_error(request, client_address):
    """A client that went away (killed mid-request, as tests do) is one
    line, not a traceback; anything else is a traceback."""
    ex = sys.exc_info()[1]
    if isinstance(ex, (BrokenPipeError, ConnectionResetError, TimeoutError)):
        log("client %s went away: %s", client_address, ex)
        return
    warn("error serving %s:", client_address)
    import traceback
    traceback.print_exc()


class FakeServer(http.server.ThreadingHTTPServer):
    """The HTTP server of a fake: control state, recorder, the fake's data."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, args, ctl=None, recorder=None):
        super().__init__(addr, handler)
        self.args = args
        self.ctl = ctl if ctl is not None else Control()
        self.recorder = recorder if recorder is not None else Recorder(args.record)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.data = {}

    def notify(self):
        """Wakes long polls waiting on self.cond."""
        with self.cond:
            self.cond.notify_all()

    def handle_error(self, request, client_address):
        _handle_error(request, client_address)


class FakeHandler(http.server.BaseHTTPRequestHandler):
    """Base of an HTTP fake. Subclasses set `name` and implement route()."""

    name = "fake"
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, every keep-alive
    # answer would wait for the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True

    # -- hooks for subclasses -------------------------------------------------

    def route(self, method, path, query, body):
        """Answers one request: (status, body[, headers])."""
        return 404, self.error_body(404, "no such path: " + path)

    def error_body(self, status, message):
        """The provider's error body for status."""
        return {"error": {"message": message, "code": status}}

    def rate_limit_body(self, retry_after):
        """The provider's 429 body."""
        return self.error_body(429, "Too Many Requests: retry after %d" % retry_after)

    def rate_limit_headers(self, retry_after):
        """Headers sent with a 429 (Retry-After by default)."""
        return {"Retry-After": str(retry_after)}

    def control(self, method, name, body):
        """/_control/NAME other than state: (status, body) or None (404)."""
        return None

    def extra_state(self):
        """Added to GET /_control/state."""
        return {}

    # -- helpers --------------------------------------------------------------

    def header(self, name):
        return self.headers.get(name)

    def form(self, body):
        """A form-encoded body as {name: value} (last value wins)."""
        return {k: v[-1] for k, v in urllib.parse.parse_qs(
            body.decode("utf-8", "replace"), keep_blank_values=True).items()}

    def json(self, body):
        """A JSON body, or None when it is not JSON."""
        try:
            return json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None

    def log_message(self, fmt, *args):
        log(fmt, *args)

    def send_answer(self, status, body, headers=None):
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode("utf-8")
            ctype = "application/json"
        elif isinstance(body, str):
            data = body.encode("utf-8")
            ctype = "text/plain; charset=utf-8"
        elif body is None:
            data = b""
            ctype = None
        else:
            data = body
            ctype = "application/octet-stream"
        headers = dict(headers or {})
        if ctype and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = ctype
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # -- the request cycle ----------------------------------------------------

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > 0:
            return self.rfile.read(n)
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _handle(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(
            url.query, keep_blank_values=True).items()}
        body = self._read_body()
        if path == "/_control" or path.startswith("/_control/"):
            self._control(path, body)
            return
        ctl = self.server.ctl
        ctl.count(path)
        rec = {
            "method": self.command,
            "path": path,
            "query": query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "t": time.time(),
        }
        rec.update(body_fields(body))
        ctl.delay()
        fate = ctl.take(path)
        if fate is not None and fate[0] == "rate_limit":
            status, answer, headers = 429, self.rate_limit_body(fate[1]), \
                self.rate_limit_headers(fate[1])
        elif fate is not None:
            status = fate[1]
            answer = fate[2] if fate[2] is not None else \
                self.error_body(status, "injected failure")
            headers = {}
        else:
            try:
                res = self.route(self.command, path, query, body)
            except Exception as ex:  # a bug in the fake: say so, answer 500
                warn("route %s %s: %r", self.command, path, ex)
                res = (500, self.error_body(500, "fake error: %r" % ex))
            status, answer = res[0], res[1]
            headers = res[2] if len(res) > 2 else {}
        rec["status"] = status
        rec["response"] = answer if isinstance(answer, (dict, list, str)) else None
        self.server.recorder.write(rec)
        self.send_answer(status, answer, headers)

    def _control(self, path, body):
        ctl = self.server.ctl
        if path == "/_control" and self.command == "POST":
            try:
                obj = json.loads(body.decode("utf-8") or "{}")
                ctl.apply(obj)
            except (ValueError, TypeError) as ex:
                self.send_answer(400, {"error": str(ex)})
                return
            self.send_answer(200, self._state())
            return
        if path in ("/_control", "/_control/state") and self.command == "GET":
            self.send_answer(200, self._state())
            return
        res = self.control(self.command, path[len("/_control/"):], body)
        if res is None:
            self.send_answer(404, {"error": "no such control: " + path})
        else:
            self.send_answer(res[0], res[1])

    def _state(self):
        st = self.server.ctl.state()
        st.update(self.extra_state())
        return st

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def do_PATCH(self):
        self._handle()


class ControlHandler(FakeHandler):
    """The control-only HTTP server of a TCP fake."""

    name = "control"

    def route(self, method, path, query, body):
        return 404, {"error": "control server: only /_control"}

    def control(self, method, name, body):
        hook = getattr(self.server, "control_hook", None)
        return hook(method, name, body) if hook else None

    def extra_state(self):
        hook = getattr(self.server, "state_hook", None)
        return hook() if hook else {}


class FakeTCPServer(socketserver.ThreadingTCPServer):
    """The socket server of a TCP fake (SMTP, IMAP)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, args):
        super().__init__(addr, handler)
        self.args = args
        self.ctl = Control()
        self.recorder = Recorder(args.record)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.data = {}

    def notify(self):
        with self.cond:
            self.cond.notify_all()

    def handle_error(self, request, client_address):
        _handle_error(request, client_address)


class FakeTCPHandler(socketserver.StreamRequestHandler):
    """Base of a line-protocol fake. Subclasses implement handle()."""

    name = "fake"
    timeout = 60

    @property
    def ctl(self):
        return self.server.ctl

    def readline(self, limit=1 << 20):
        """One line without its CRLF as bytes, or None at EOF."""
        line = self.rfile.readline(limit)
        if not line:
            return None
        return line.rstrip(b"\r\n")

    def write(self, text):
        """Sends text (str or bytes) as is; add the CRLF yourself."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.wfile.write(text)
        self.wfile.flush()

    def record(self, obj):
        obj.setdefault("t", time.time())
        self.server.recorder.write(obj)

    # Hooks for the control server.
    @classmethod
    def control(cls, server, method, name, body):
        return None

    @classmethod
    def extra_state(cls, server):
        return {}


def _parser(description, tcp):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    p.add_argument("--ready", help="write the chosen port here once listening")
    p.add_argument("--record", help="append one JSON line per request here")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    if tcp:
        p.add_argument("--control-port", type=int, default=0,
                       help="port of the HTTP control server (0: any free)")
        p.add_argument("--control-ready", help="write the control port here")
    return p


def _serve(servers):
    """Serves until SIGTERM/SIGINT; returns 0."""
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = []
    for s in servers:
        t = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        t.start()
        threads.append(t)
    while not stop.is_set():
        stop.wait(0.5)
    for s in servers:
        s.shutdown()
        s.server_close()
    return 0


def main(handler, description, add_args=None, setup=None):
    """Runs an HTTP fake: parses the common options (plus add_args(parser)),
    binds 127.0.0.1, calls setup(server) if given, writes --ready, serves."""
    p = _parser(description, False)
    if add_args:
        add_args(p)
    args = p.parse_args()
    _Log.verbose = args.verbose
    _Log.name = handler.name
    srv = FakeServer(("127.0.0.1", args.port), handler, args)
    if setup:
        setup(srv)
    write_ready(args.ready, srv.server_address[1])
    log("listening on 127.0.0.1:%d", srv.server_address[1])
    return _serve([srv])


def main_tcp(handler, description, add_args=None, setup=None):
    """Runs a TCP fake plus its HTTP control server (--control-port); both
    share one Control and one recorder."""
    p = _parser(description, True)
    if add_args:
        add_args(p)
    args = p.parse_args()
    _Log.verbose = args.verbose
    _Log.name = handler.name
    srv = FakeTCPServer(("127.0.0.1", args.port), handler, args)
    cargs = argparse.Namespace(record=None)
    csrv = FakeServer(("127.0.0.1", args.control_port), ControlHandler, cargs,
                      ctl=srv.ctl, recorder=Recorder(None))
    csrv.control_hook = lambda m, n, b: handler.control(srv, m, n, b)
    csrv.state_hook = lambda: handler.extra_state(srv)
    if setup:
        setup(srv)
    write_ready(args.control_ready, csrv.server_address[1])
    write_ready(args.ready, srv.server_address[1])
    log("listening on 127.0.0.1:%d, control on %d", srv.server_address[1],
        csrv.server_address[1])
    return _serve([srv, csrv])
