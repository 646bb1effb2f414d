/* webhook_chat — web chat replies and the streams that show them (GET
 * /chat/stream, Server-Sent Events). The last N events of each session are
 * kept in memory, in a hash of sessions with the least recently used one
 * forgotten when full. Event ids grow across restarts (they start from the
 * clock in µs), so a browser's Last-Event-ID from before a restart asks
 * for nothing twice. A stream with nothing to send is suspended (out of
 * libmicrohttpd's loop) until a reply for its session or the keepalive
 * resumes it. See webhook.h. */
#include "webhook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <microhttpd.h>

#include "mp.h"

#define SESSION_MAX 128     /* bytes of a session id */

/* One reply, ready to send. */
struct chat_event {
    uint64_t id;                /* SSE id */
    char env_id[ULID_LEN + 1];  /* the envelope's id, to ignore it when sent again */
    char *data;                 /* the JSON of the data: line */
};

struct chat_session {
    char name[SESSION_MAX + 1]; /* the session id */
    struct chat_event *ring;    /* the last events, oldest at head */
    size_t head;                /* index of the oldest */
    size_t n;                   /* events kept */
    uint64_t used;              /* tick of the last use, for eviction */
    struct chat_session *next;  /* next in its bucket */
};

/* One GET /chat/stream. */
struct chat_stream {
    struct webhook_chat *chat;      /* the store */
    struct MHD_Connection *conn;    /* its connection */
    char session[SESSION_MAX + 1];  /* whose replies */
    uint64_t last;                  /* id of the last event sent */
    struct buf out;                 /* bytes to write */
    size_t off;                     /* bytes of out written */
    bool started;                   /* the preamble went out */
    bool suspended;                 /* waiting for an event */
    uint64_t last_write;            /* monotonic ms of the last write */
    struct chat_stream *prev;       /* previous in the list */
    struct chat_stream *next;       /* next in the list */
};

struct webhook_chat {
    struct chat_session **bucket; /* hash buckets */
    size_t nbuckets;            /* a power of two */
    size_t count;               /* sessions kept */
    size_t max;                 /* sessions at most */
    size_t per;                 /* events per session */
    uint64_t next_id;           /* the next event's id */
    uint64_t tick;              /* use counter */
    const char *origin;         /* CORS origin, or NULL */
    struct chat_stream *streams; /* open streams */
    size_t nstreams;            /* how many */
    bool stopping;              /* streams end once they have said what they hold */
};

static size_t s_hash(const char *s)
{
    size_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    }
    return h;
}

struct webhook_chat *webhook_chat_new(size_t per_session, size_t sessions, const char *origin)
{
    struct webhook_chat *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    c->per = per_session > 0 ? per_session : 1;
    c->max = sessions > 0 ? sessions : 1;
    c->nbuckets = 64;
    while (c->nbuckets < c->max) {
        c->nbuckets *= 2;
    }
    c->bucket = calloc(c->nbuckets, sizeof *c->bucket);
    if (c->bucket == NULL) {
        free(c);
        return NULL;
    }
    c->next_id = stage_now_ms() * 1000;
    c->origin = origin;
    return c;
}

static void s_session_free(const struct webhook_chat *c, struct chat_session *s)
{
    for (size_t i = 0; i < c->per; i++) {
        free(s->ring[i].data);      /* NULL in slots never used */
    }
    free(s->ring);
    free(s);
}

void webhook_chat_destroy(struct webhook_chat **cp)
{
    struct webhook_chat *c = *cp;
    if (c == NULL) {
        return;
    }
    for (size_t b = 0; b < c->nbuckets; b++) {
        struct chat_session *s = c->bucket[b];
        while (s != NULL) {
            struct chat_session *next = s->next;
            s_session_free(c, s);
            s = next;
        }
    }
    free(c->bucket);
    free(c);
    *cp = NULL;
}

static struct chat_session *s_find(struct webhook_chat *c, const char *name)
{
    for (struct chat_session *s = c->bucket[s_hash(name) & (c->nbuckets - 1)]; s; s = s->next) {
        if (strcmp(s->name, name) == 0) {
            s->used = ++c->tick;
            return s;
        }
    }
    return NULL;
}

/* Forgets the session used least recently. */
static void s_evict(struct webhook_chat *c)
{
    struct chat_session **victim = NULL;
    for (size_t b = 0; b < c->nbuckets; b++) {
        for (struct chat_session **p = &c->bucket[b]; *p; p = &(*p)->next) {
            if (victim == NULL || (*p)->used < (*victim)->used) {
                victim = p;
            }
        }
    }
    if (victim != NULL) {
        struct chat_session *s = *victim;
        *victim = s->next;
        s_session_free(c, s);
        c->count--;
    }
}

static struct chat_session *s_add_session(struct webhook_chat *c, const char *name)
{
    if (c->count >= c->max) {
        s_evict(c);
    }
    struct chat_session *s = calloc(1, sizeof *s);
    if (s == NULL || (s->ring = calloc(c->per, sizeof *s->ring)) == NULL) {
        free(s);
        return NULL;
    }
    snprintf(s->name, sizeof s->name, "%s", name);
    s->used = ++c->tick;
    size_t b = s_hash(name) & (c->nbuckets - 1);
    s->next = c->bucket[b];
    c->bucket[b] = s;
    c->count++;
    return s;
}

/* The data of an event: what a browser needs of the reply, not the
 * pipeline's internals (route, bot scores, trace). */
static char *s_event_json(const struct env *e)
{
    struct buf b = { 0 };
    const char *id = env_get(e, ENV_ID);
    int rc = buf_puts(&b, "{\"id\":");
    rc |= buf_json_str(&b, id, strlen(id));
    rc |= buf_printf(&b, ",\"ts\":%llu", (unsigned long long)e->ts);
    static const enum env_key strs[] = { ENV_TEXT, ENV_REPLY_TO };
    for (size_t i = 0; i < 2; i++) {
        const char *v = env_get(e, strs[i]);
        if (v != NULL) {
            rc |= buf_printf(&b, ",\"%s\":", env_key_name(strs[i]));
            rc |= buf_json_str(&b, v, strlen(v));
        }
    }
    size_t n = 0;
    const void *att = env_raw(e, ENV_ATTACHMENTS, &n);
    if (att != NULL) {
        rc |= buf_puts(&b, ",\"attachments\":");
        rc |= mp_to_json(att, n, &b);
    }
    rc |= buf_putc(&b, '}');
    if (rc != 0) {
        buf_free(&b);
        return NULL;
    }
    return b.data;
}

/* Resumes the suspended streams of session (NULL: all); returns how many. */
static size_t s_wake(struct webhook_chat *c, const char *session)
{
    size_t n = 0;
    for (struct chat_stream *st = c->streams; st != NULL; st = st->next) {
        if (st->suspended && (session == NULL || strcmp(st->session, session) == 0)) {
            st->suspended = false;
            MHD_resume_connection(st->conn);
            n++;
        }
    }
    return n;
}

int webhook_chat_add(struct webhook_chat *c, const struct env *e)
{
    const char *dir = env_get(e, ENV_DIR);
    const char *to = env_get(e, ENV_TO);
    const char *id = env_get(e, ENV_ID);
    if (dir == NULL || strcmp(dir, "out") != 0 || to == NULL || strncmp(to, "webchat:", 8) != 0
        || id == NULL || !webhook_parse_session(to + 8)) {
        return 0;
    }
    const char *name = to + 8;
    struct chat_session *s = s_find(c, name);
    if (s == NULL && (s = s_add_session(c, name)) == NULL) {
        return -1;
    }
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->ring[(s->head + i) % c->per].env_id, id) == 0) {
            return 0;       /* sent again by omni-send: shown once */
        }
    }
    char *data = s_event_json(e);
    if (data == NULL) {
        return -1;
    }
    struct chat_event *ev;
    if (s->n == c->per) {
        ev = &s->ring[s->head];
        free(ev->data);
        s->head = (s->head + 1) % c->per;
    } else {
        ev = &s->ring[(s->head + s->n) % c->per];
        s->n++;
    }
    ev->id = ++c->next_id;
    snprintf(ev->env_id, sizeof ev->env_id, "%s", id);
    ev->data = data;
    s_wake(c, name);
    return 1;
}

/* Appends the session's events with an id above *last to out, and moves
 * *last to the last one. Returns how many. */
static size_t s_since(struct webhook_chat *c, const char *session, uint64_t *last, struct buf *out)
{
    struct chat_session *s = s_find(c, session);
    size_t count = 0;
    for (size_t i = 0; s != NULL && i < s->n; i++) {
        const struct chat_event *ev = &s->ring[(s->head + i) % c->per];
        if (ev->id <= *last) {
            continue;
        }
        if (buf_printf(out, "id: %llu\nevent: message\ndata: %s\n\n", (unsigned long long)ev->id,
                       ev->data) != 0) {
            break;
        }
        *last = ev->id;
        count++;
    }
    return count;
}

static ssize_t s_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct chat_stream *st = cls;
    struct webhook_chat *c = st->chat;
    if (st->off == st->out.len) {
        buf_reset(&st->out);
        st->off = 0;
        if (!st->started) {
            buf_puts(&st->out, ": omnibus web chat\nretry: 2000\n\n");
            st->started = true;
        }
        s_since(c, st->session, &st->last, &st->out);
        if (st->out.len == 0 && c->stopping) {
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (st->out.len == 0 && stage_mono_ms() - st->last_write >= WEBHOOK_KEEPALIVE_MS) {
            buf_puts(&st->out, ": keepalive\n\n");
        }
        if (st->out.len == 0) {
            MHD_suspend_connection(st->conn);
            st->suspended = true;
            return 0;
        }
    }
    size_t n = st->out.len - st->off;
    n = n < max ? n : max;
    memcpy(buf, st->out.data + st->off, n);
    st->off += n;
    st->last_write = stage_mono_ms();
    return (ssize_t)n;
}

static void s_stream_free(void *cls)
{
    struct chat_stream *st = cls;
    struct webhook_chat *c = st->chat;
    if (st->prev != NULL) {
        st->prev->next = st->next;
    } else {
        c->streams = st->next;
    }
    if (st->next != NULL) {
        st->next->prev = st->prev;
    }
    c->nstreams--;
    buf_free(&st->out);
    free(st);
}

int webhook_chat_open(struct webhook_chat *c, struct MHD_Connection *conn, const char *session,
                      uint64_t last)
{
    struct chat_stream *st = calloc(1, sizeof *st);
    if (st == NULL) {
        return 0;
    }
    st->chat = c;
    st->conn = conn;
    snprintf(st->session, sizeof st->session, "%s", session);
    st->last = last;
    st->last_write = stage_mono_ms();
    st->next = c->streams;
    if (c->streams != NULL) {
        c->streams->prev = st;
    }
    c->streams = st;
    c->nstreams++;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096,
                                                                  s_stream_read, st, s_stream_free);
    if (resp == NULL) {
        s_stream_free(st);
        return 0;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    if (c->origin != NULL) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", c->origin);
    }
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);     /* freed (with st) when the connection is done */
    return ret == MHD_YES;
}

size_t webhook_chat_wake(struct webhook_chat *c, bool stop)
{
    c->stopping = c->stopping || stop;
    return s_wake(c, NULL);
}

size_t webhook_chat_streams(const struct webhook_chat *c)
{
    return c->nstreams;
}
