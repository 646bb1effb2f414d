#!/usr/bin/env python3
"""meta_retry — stands in for Meta delivering WhatsApp Cloud webhooks in
tests/integration/backpressure.sh: POSTs --messages signed payloads, one
message each (wamid.bp-N, its own text), to --url, and delivers each until
it is answered 200, as Meta does: a 503 is retried after its Retry-After
(seconds; 1 when the header is missing), anything else but 200 and a
refused or dropped connection after --backoff seconds. New payloads go out
while retries wait; --threads keep-alive connections share the work.

Bounded: --deadline seconds for the whole run (what is unanswered then is
given up, and the exit status is 1).

--record FILE gets one JSON line per POST, flushed at once:
    {"n": N, "wamid": "wamid.bp-N", "status": "200"|"503"|"ConnectionRefusedError"|...,
     "retry_after": "1" or null}
--progress FILE is rewritten (atomically) after every answer:
    {"fresh_done": true once every payload was POSTed at least once,
     "acked": payloads answered 200, "posts": N, "status": {"503": N, ...}}
A JSON summary goes to stdout at the end. Python 3 standard library only.
"""
import argparse
import hashlib
import heapq
import hmac
import http.client
import json
import os
import sys
import threading
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="http://127.0.0.1:PORT/whatsapp")
    p.add_argument("--secret", required=True, help="the Meta app secret (X-Hub-Signature-256)")
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--deadline", type=float, default=120)
    p.add_argument("--backoff", type=float, default=0.5, help="seconds before retrying a non-503 failure")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one POST may take")
    p.add_argument("--phone-id", default="106540352242922")
    p.add_argument("--record", required=True)
    p.add_argument("--progress", required=True)
    return p.parse_args()


def payload(a, n):
    """(body, signature) of message n."""
    phone = "5511990%06d" % (n % 37)
    doc = {"object": "whatsapp_business_account",
           "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
               "messaging_product": "whatsapp",
               "metadata": {"display_phone_number": "551140041234", "phone_number_id": a.phone_id},
               "contacts": [{"profile": {"name": "Cliente %d" % (n % 37)}, "wa_id": phone}],
               "messages": [{"from": phone, "id": "wamid.bp-%d" % n, "timestamp": "1741000000",
                             "type": "text", "text": {"body": "backpressure message %d" % n}}]}}]}]}
    body = json.dumps(doc, separators=(",", ":")).encode()
    return body, "sha256=" + hmac.new(a.secret.encode(), body, hashlib.sha256).hexdigest()


class Shared:
    def __init__(self, a):
        self.a = a
        self.lock = threading.Lock()
        self.next_fresh = 0
        self.retries = []           # heap of (due, n)
        self.acked = set()
        self.answered_once = set()
        self.posts = 0
        self.status = {}
        self.deadline = time.monotonic() + a.deadline
        self.rec = open(a.record, "a", encoding="utf-8")

    def take(self):
        """("post", n): the next payload (a due retry first, then a new
        one); ("wait", seconds); or None when every payload is answered 200."""
        with self.lock:
            now = time.monotonic()
            if self.retries and self.retries[0][0] <= now:
                return ("post", heapq.heappop(self.retries)[1])
            if self.next_fresh < self.a.messages:
                self.next_fresh += 1
                return ("post", self.next_fresh)
            if len(self.acked) == self.a.messages:
                return None
            return ("wait", self.retries[0][0] - now if self.retries else 0.05)

    def answered(self, n, status, retry_after):
        with self.lock:
            self.posts += 1
            self.answered_once.add(n)
            self.status[status] = self.status.get(status, 0) + 1
            self.rec.write(json.dumps({"n": n, "wamid": "wamid.bp-%d" % n, "status": status,
                                       "retry_after": retry_after}) + "\n")
            self.rec.flush()
            if status == "200":
                self.acked.add(n)
            else:
                wait = self.a.backoff
                if status == "503":
                    try:
                        wait = float(retry_after)
                    except (TypeError, ValueError):
                        wait = 1.0
                heapq.heappush(self.retries, (time.monotonic() + wait, n))
            doc = {"fresh_done": len(self.answered_once) == self.a.messages,
                   "acked": len(self.acked), "posts": self.posts, "status": dict(self.status)}
            tmp = self.a.progress + ".tmp"
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self.a.progress)


def worker(sh, host, port, path):
    a = sh.a
    conn = None
    while time.monotonic() < sh.deadline:
        job = sh.take()
        if job is None:
            break
        what, n = job
        if what == "wait":
            time.sleep(min(max(n, 0.01), 0.2))
            continue
        body, sig = payload(a, n)
        retry_after = None
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=a.timeout)
            conn.request("POST", path, body=body, headers={
                "Content-Type": "application/json", "X-Hub-Signature-256": sig,
                "User-Agent": "facebookexternalua"})
            resp = conn.getresponse()
            resp.read()
            status = str(resp.status)
            retry_after = resp.getheader("Retry-After")
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as ex:
            status = type(ex).__name__
            if conn is not None:
                conn.close()
            conn = None
        sh.answered(n, status, retry_after)
    if conn is not None:
        conn.close()


def main():
    a = parse_args()
    if not a.url.startswith("http://"):
        sys.exit("meta_retry: --url must be http://HOST:PORT/PATH")
    hostport, _, path = a.url[len("http://"):].partition("/")
    host, _, port = hostport.rpartition(":")
    sh = Shared(a)
    threads = [threading.Thread(target=worker, args=(sh, host, int(port), "/" + path))
               for _ in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"messages": a.messages, "acked": len(sh.acked), "posts": sh.posts,
                      "status": sh.status}, sort_keys=True))
    return 0 if len(sh.acked) == a.messages else 1


if __name__ == "__main__":
    sys.exit(main())
