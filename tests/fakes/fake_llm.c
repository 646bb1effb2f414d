/* fake_llm — a fake OpenAI-compatible chat completions server on 127.0.0.1
 * for omni-bot's tests. POST /v1/chat/completions is answered according to
 * --mode:
 *
 *   answer    200 with choices[0].message.content = "FAKE-LLM answer from
 *             <slug>", <slug> being the first article named in the system
 *             message (so a test sees the context was sent)
 *   fail      500
 *   garbage   200 with a body that is not JSON
 *   handoff   200 with content "HANDOFF"
 *
 * --delay-ms N waits N ms before answering (to exceed a client's timeout).
 * The bound port (--port 0 picks a free one) is written to --port-file;
 * every request body is appended, one per line, to --log.
 *
 *   fake_llm --mode answer --port-file p [--port 0] [--delay-ms 0] [--log f]
 *
 * Built by tests/integration/bot.sh (cc ... $(pkg-config --libs libmicrohttpd)). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Options. */
struct fake {
    const char *mode;       /* answer, fail, garbage, handoff */
    int delay_ms;           /* wait before answering */
    const char *log;        /* file of request bodies, or NULL */
};

/* One request's body as it arrives. */
struct upload {
    char *data;             /* bytes so far, NUL-terminated */
    size_t len;             /* bytes */
};

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static enum MHD_Result s_reply(struct MHD_Connection *c, unsigned status, const char *body,
                               const char *type)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body,
                                                             MHD_RESPMEM_MUST_COPY);
    if (r == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

/* The slug in "### Article 1: Title (slug)" of the request, JSON-escaped
 * text included, into out[n]; "none" when absent. */
static void s_first_slug(const char *body, char *out, size_t n)
{
    snprintf(out, n, "none");
    const char *a = strstr(body, "### Article 1: ");
    if (a == NULL) {
        return;
    }
    const char *nl = strstr(a, "\\n");
    if (nl == NULL) {
        return;
    }
    const char *close = nl - 1;
    const char *open = close;
    while (open > a && *open != '(') {
        open--;
    }
    if (*close != ')' || *open != '(' || (size_t)(close - open - 1) >= n) {
        return;
    }
    memcpy(out, open + 1, (size_t)(close - open - 1));
    out[close - open - 1] = '\0';
}

static enum MHD_Result s_handle(void *cls, struct MHD_Connection *c, const char *url,
                                const char *method, const char *version, const char *data,
                                size_t *size, void **con_cls)
{
    (void)version;
    struct fake *f = cls;
    struct upload *u = *con_cls;
    if (u == NULL) {
        u = calloc(1, sizeof *u);
        if (u == NULL) {
            return MHD_NO;
        }
        *con_cls = u;
        return MHD_YES;
    }
    if (*size > 0) {
        char *nd = realloc(u->data, u->len + *size + 1);
        if (nd == NULL) {
            return MHD_NO;
        }
        u->data = nd;
        memcpy(u->data + u->len, data, *size);
        u->len += *size;
        u->data[u->len] = '\0';
        *size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "POST") != 0 || strcmp(url, "/v1/chat/completions") != 0) {
        return s_reply(c, 404, "{\"error\":\"not found\"}", "application/json");
    }
    const char *body = u->data ? u->data : "";
    if (f->log != NULL) {
        FILE *lf = fopen(f->log, "a");
        if (lf != NULL) {
            fprintf(lf, "%s\n", body);
            fclose(lf);
        }
    }
    if (f->delay_ms > 0) {
        usleep((useconds_t)f->delay_ms * 1000);
    }
    if (strcmp(f->mode, "fail") == 0) {
        return s_reply(c, 500, "{\"error\":\"internal error\"}", "application/json");
    }
    if (strcmp(f->mode, "garbage") == 0) {
        return s_reply(c, 200, "<html>surprise</html>", "text/html");
    }
    char slug[128];
    s_first_slug(body, slug, sizeof slug);
    char content[256];
    if (strcmp(f->mode, "handoff") == 0) {
        snprintf(content, sizeof content, "HANDOFF");
    } else {
        snprintf(content, sizeof content, "FAKE-LLM answer from %s", slug);
    }
    char out[1024];
    snprintf(out, sizeof out,
             "{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion\",\"model\":\"fake\","
             "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"%s\"},"
             "\"finish_reason\":\"stop\"}]}", content);
    return s_reply(c, 200, out, "application/json");
}

static void s_done(void *cls, struct MHD_Connection *c, void **con_cls,
                   enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    struct upload *u = *con_cls;
    if (u != NULL) {
        free(u->data);
        free(u);
        *con_cls = NULL;
    }
}

int main(int argc, char **argv)
{
    struct fake f = { .mode = "answer", .delay_ms = 0, .log = NULL };
    const char *port_file = NULL;
    int port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--mode") == 0) {
            f.mode = argv[i + 1];
        } else if (strcmp(argv[i], "--delay-ms") == 0) {
            f.delay_ms = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--log") == 0) {
            f.log = argv[i + 1];
        } else if (strcmp(argv[i], "--port-file") == 0) {
            port_file = argv[i + 1];
        } else if (strcmp(argv[i], "--port") == 0) {
            port = atoi(argv[i + 1]);
        } else {
            fprintf(stderr, "fake_llm: unknown option %s\n", argv[i]);
            return 64;
        }
    }
    signal(SIGTERM, s_on_signal);
    signal(SIGINT, s_on_signal);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, (uint16_t)port, NULL, NULL,
        s_handle, &f, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED,
        s_done, NULL, MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "fake_llm: cannot listen on 127.0.0.1:%d\n", port);
        return 69;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    if (port_file != NULL && info != NULL) {
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
        FILE *pf = fopen(tmp, "w");
        if (pf != NULL) {
            fprintf(pf, "%u\n", (unsigned)info->port);
            fclose(pf);
            rename(tmp, port_file);
        }
    }
    while (!s_stop) {
        usleep(50 * 1000);
    }
    MHD_stop_daemon(d);
    return 0;
}
