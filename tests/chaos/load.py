#!/usr/bin/env python3
"""load -- the chaos test's load generator: N signed WhatsApp Cloud webhook
POSTs to omni-ingest-webhook, retried the way Meta retries, with a record of
which message ids (wamids) the channel saw acknowledged.

Each message has its own wamid; about --customers distinct customers write
(Brazilian mobile numbers, profile names); the texts are the pt-BR questions
of examples/questions.jsonl, so the bot answers many of them. A few payloads
carry two or three messages (Meta batches), each of which counts.

Meta's behaviour: any answer but 200, a refused or dropped connection, or no
answer within --timeout is retried with the same body (same signature) after
a growing, jittered backoff, up to --tries times. Fresh messages keep flowing
while retries wait (each of --threads keep-alive connections has its own
retry heap). Everything is bounded: --tries per payload and --deadline for
the whole run (what is still unacknowledged then is given up).

Output: --record FILE, one line per wamid: "wamid<TAB>acked<TAB>tries<TAB>
last status" (acked is 1 when some POST that carried it was answered 200);
a JSON summary on stdout. Python 3 standard library only.
"""
import argparse
import base64
import hashlib
import heapq
import hmac
import http.client
import json
import os
import random
import sys
import threading
import time

FIRST = ["Ana", "Bruno", "Carla", "Diego", "Eduarda", "Felipe", "Gabriela", "Henrique", "Isabela",
         "João", "Karina", "Lucas", "Mariana", "Nicolas", "Olívia", "Paulo", "Quésia", "Rafael",
         "Sofia", "Thiago", "Úrsula", "Vinícius", "Wesley", "Yasmin", "Zé", "Letícia", "Caio",
         "Beatriz", "Matheus", "Larissa", "Gustavo", "Fernanda", "Renata", "Otávio"]
LAST = ["Souza", "Silva", "Santos", "Oliveira", "Lima", "Pereira", "Costa", "Rodrigues", "Almeida",
        "Nascimento", "Araújo", "Ribeiro", "Carvalho", "Gomes", "Martins", "Rocha", "Barbosa",
        "Moreira", "Teixeira", "Cardoso", "Mendes", "Freitas", "Dias", "Castro", "Campos"]
DDD = ["11", "21", "31", "41", "51", "61", "71", "81", "85", "91", "19", "27", "47", "62", "48"]
EXTRA = ["oi", "bom dia!", "boa tarde", "olá, tudo bem?", "obrigada!", "ok", "valeu", "👍",
         "quero falar com um atendente", "meu pedido veio errado", "quero meu dinheiro de volta"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="http://127.0.0.1:PORT/whatsapp")
    p.add_argument("--secret", required=True, help="the Meta app secret (X-Hub-Signature-256)")
    p.add_argument("--messages", type=int, default=1000, help="messages to send")
    p.add_argument("--customers", type=int, default=2000, help="distinct customers")
    p.add_argument("--questions", required=True, help="JSON lines with a 'q' text each")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=6, help="keep-alive connections")
    p.add_argument("--tries", type=int, default=10, help="POSTs per payload at most")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds one POST may take")
    p.add_argument("--rate", type=float, default=0, help="new payloads per second at most (0: no limit)")
    p.add_argument("--deadline", type=float, default=600, help="seconds the whole run may take")
    p.add_argument("--multi", type=float, default=0.05, help="share of payloads carrying 2-3 messages")
    p.add_argument("--phone-id", default="106540352242922")
    p.add_argument("--display-phone", default="551140041234")
    p.add_argument("--record", required=True, help="write wamid, acked, tries, status lines here")
    p.add_argument("--progress", help="rewrite this file with counters about once a second")
    return p.parse_args()


class Payload:
    __slots__ = ("body", "sig", "wamids", "tries", "status")

    def __init__(self, body, sig, wamids):
        self.body = body
        self.sig = sig
        self.wamids = wamids
        self.tries = 0
        self.status = "-"


def make_payloads(a):
    rnd = random.Random(a.seed)
    questions = []
    with open(a.questions, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                questions.append(json.loads(line)["q"])
    customers = []
    seen = set()
    while len(customers) < a.customers:
        phone = "55" + rnd.choice(DDD) + "9" + "%08d" % rnd.randrange(10 ** 8)
        if phone in seen:
            continue
        seen.add(phone)
        customers.append((phone, rnd.choice(FIRST) + " " + rnd.choice(LAST)))
    secret = a.secret.encode()
    run = "%08X" % rnd.getrandbits(32)
    t0 = int(time.time())
    payloads = []
    n = 0
    while n < a.messages:
        k = 1
        if rnd.random() < a.multi:
            k = min(rnd.choice((2, 3)), a.messages - n)
        msgs, contacts, wamids = [], [], []
        for _ in range(k):
            phone, name = rnd.choice(customers)
            text = rnd.choice(questions) if rnd.random() < 0.9 else rnd.choice(EXTRA)
            raw = b"\x18\x0d" + phone.encode() + b"\x15\x02\x00\x12\x18\x16" + \
                ("%s%012X" % (run, n)).encode() + rnd.getrandbits(32).to_bytes(4, "big")
            wamid = "wamid." + base64.b64encode(raw).decode()
            wamids.append(wamid)
            contacts.append({"profile": {"name": name}, "wa_id": phone})
            msgs.append({"from": phone, "id": wamid, "timestamp": str(t0 + n // 50),
                         "text": {"body": text}, "type": "text"})
            n += 1
        doc = {"object": "whatsapp_business_account",
               "entry": [{"id": "102290129340398", "changes": [{"value": {
                   "messaging_product": "whatsapp",
                   "metadata": {"display_phone_number": a.display_phone,
                                "phone_number_id": a.phone_id},
                   "contacts": contacts, "messages": msgs}, "field": "messages"}]}]}
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        payloads.append(Payload(body, sig, wamids))
    return payloads


class Shared:
    def __init__(self, a, payloads):
        self.a = a
        self.lock = threading.Lock()
        self.fresh = iter(payloads)
        self.status = {}
        self.acked = 0
        self.posts = 0
        self.gave_up = 0
        self.start = time.monotonic()
        self.deadline = self.start + a.deadline
        self.next_slot = self.start
        self.done_fresh = False

    def take_fresh(self):
        """The next new payload, or None; waits for --rate's slot."""
        with self.lock:
            if self.done_fresh:
                return None
            p = next(self.fresh, None)
            if p is None:
                self.done_fresh = True
                return None
            wait = 0.0
            if self.a.rate > 0:
                now = time.monotonic()
                slot = max(self.next_slot, now)
                self.next_slot = slot + 1.0 / self.a.rate
                wait = slot - now
        if wait > 0:
            time.sleep(wait)
        return p

    def count(self, status, acked):
        with self.lock:
            self.posts += 1
            self.status[status] = self.status.get(status, 0) + 1
            self.acked += acked


def backoff(tries, rnd):
    base = min(0.25 * (2 ** (tries - 1)), 4.0)
    return base * (0.5 + rnd.random())


def worker(sh, idx, host, port, path):
    a = sh.a
    rnd = random.Random(a.seed * 1000 + idx)
    heap = []       # (due, seq, payload): retries
    seq = 0
    conn = None
    while True:
        now = time.monotonic()
        if now >= sh.deadline:
            break
        p = None
        if heap and heap[0][0] <= now:
            p = heapq.heappop(heap)[2]
        else:
            p = sh.take_fresh()
            if p is None:
                if not heap:
                    break
                time.sleep(max(0.0, min(heap[0][0], sh.deadline) - time.monotonic()))
                continue
        p.tries += 1
        status = None
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=a.timeout)
            conn.request("POST", path, body=p.body, headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": p.sig,
                "User-Agent": "facebookexternalua"})
            resp = conn.getresponse()
            resp.read()
            status = str(resp.status)
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as ex:
            status = type(ex).__name__
            if conn is not None:
                conn.close()
            conn = None
        p.status = status
        ok = status == "200"
        sh.count(status, len(p.wamids) if ok else 0)
        if ok:
            p.tries = -p.tries      # negative: acknowledged after that many
            continue
        if p.tries >= a.tries:
            with sh.lock:
                sh.gave_up += 1
            continue
        seq += 1
        heapq.heappush(heap, (time.monotonic() + backoff(p.tries, rnd), seq, p))
    if conn is not None:
        conn.close()


def progress(sh, path, stop):
    while not stop.wait(1.0):
        with sh.lock:
            doc = {"posts": sh.posts, "acked": sh.acked, "gave_up": sh.gave_up,
                   "elapsed": round(time.monotonic() - sh.start, 1), "status": dict(sh.status)}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)


def main():
    a = parse_args()
    if not a.url.startswith("http://"):
        sys.exit("load: --url must be http://HOST:PORT/PATH")
    hostport, _, path = a.url[len("http://"):].partition("/")
    host, _, port = hostport.rpartition(":")
    payloads = make_payloads(a)
    sh = Shared(a, payloads)
    stop = threading.Event()
    pt = None
    if a.progress:
        pt = threading.Thread(target=progress, args=(sh, a.progress, stop), daemon=True)
        pt.start()
    threads = [threading.Thread(target=worker, args=(sh, i, host, int(port), "/" + path))
               for i in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    attempted = acked = 0
    with open(a.record, "w") as f:
        for p in payloads:
            ok = p.tries < 0
            for w in p.wamids:
                attempted += 1
                acked += ok
                f.write("%s\t%d\t%d\t%s\n" % (w, 1 if ok else 0, abs(p.tries), p.status))
    summary = {"attempted": attempted, "acknowledged": acked, "payloads": len(payloads),
               "posts": sh.posts, "gave_up": sh.gave_up,
               "unfinished": sum(1 for p in payloads if p.tries >= 0 and p.tries < a.tries),
               "seconds": round(time.monotonic() - sh.start, 1), "status": sh.status}
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
