/* curve — CurveZMQ key files, socket options and a ZAP handler; see curve.h.
 * The ZAP handler (RFC 27) runs in a thread of its own, as ZeroMQ requires:
 * it answers on inproc://zeromq.zap.01 and admits a CURVE client only when
 * its public key is listed. */
#include "curve.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "log.h"

#define MAX_PEERS 1024

struct curve {
    char pub[CURVE_KEY_LEN + 1];        /* own public key */
    char sec[CURVE_KEY_LEN + 1];        /* own secret key */
    char server[CURVE_KEY_LEN + 1];     /* the server's public key, "" when none */
    uint8_t (*peers)[32];               /* admitted client keys, binary */
    size_t npeers;                      /* how many */
    void *zap;                          /* the ZAP REP socket, or NULL */
    pthread_t thread;                   /* the ZAP handler */
    atomic_bool stop;                   /* asks the handler to end */
    bool running;                       /* the thread was started */
};

static bool s_z85_key(const char *s)
{
    static const char alphabet[] =
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
    if (strlen(s) != CURVE_KEY_LEN) {
        return false;
    }
    for (const char *c = s; *c; c++) {
        if (strchr(alphabet, *c) == NULL) {
            return false;
        }
    }
    return true;
}

int curve_read_keys(const char *path, char pub[CURVE_KEY_LEN + 1], char sec[CURVE_KEY_LEN + 1],
                    char *err, size_t n)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, n, "%s: %s", path, strerror(errno));
        return -1;
    }
    char line[256];
    int rc = 0;
    pub[0] = '\0';
    if (sec != NULL) {
        sec[0] = '\0';
    }
    for (int lineno = 1; fgets(line, sizeof line, f) != NULL; lineno++) {
        line[strcspn(line, "\r\n")] = '\0';
        char word[16], key[128];
        if (line[0] == '#' || line[0] == '\0') {
            continue;
        }
        if (sscanf(line, "%15s %127s", word, key) != 2 || !s_z85_key(key)
            || (strcmp(word, "public") != 0 && strcmp(word, "secret") != 0)) {
            snprintf(err, n, "%s:%d: expected 'public KEY' or 'secret KEY' (40 characters of Z85)",
                     path, lineno);
            rc = -1;
            break;
        }
        if (strcmp(word, "public") == 0) {
            memcpy(pub, key, CURVE_KEY_LEN + 1);
        } else if (sec != NULL) {
            memcpy(sec, key, CURVE_KEY_LEN + 1);
        }
    }
    fclose(f);
    if (rc == 0 && pub[0] == '\0') {
        snprintf(err, n, "%s: no public key", path);
        rc = -1;
    }
    if (rc == 0 && sec != NULL && sec[0] == '\0') {
        snprintf(err, n, "%s: no secret key (give the .key file, not the .pub)", path);
        rc = -1;
    }
    return rc;
}

/* Reads the admitted clients: one public key per line, as "public KEY" or
 * the bare key; lines starting with # are comments. */
static int s_read_peers(struct curve *cv, const char *path, char *err, size_t n)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, n, "%s: %s", path, strerror(errno));
        return -1;
    }
    cv->peers = calloc(MAX_PEERS, sizeof *cv->peers);
    if (cv->peers == NULL) {
        fclose(f);
        snprintf(err, n, "out of memory");
        return -1;
    }
    char line[256];
    int rc = 0;
    for (int lineno = 1; fgets(line, sizeof line, f) != NULL; lineno++) {
        /* '#' is a Z85 character: only a line that starts with it is a comment. */
        line[strcspn(line, "\r\n")] = '\0';
        char a[128] = "", b[128] = "";
        int got = sscanf(line, "%127s %127s", a, b);
        if (got <= 0 || a[0] == '#') {
            continue;
        }
        const char *key = (got == 2 && strcmp(a, "public") == 0) ? b : a;
        if (!s_z85_key(key) || cv->npeers >= MAX_PEERS) {
            snprintf(err, n, "%s:%d: not a public key (40 characters of Z85)", path, lineno);
            rc = -1;
            break;
        }
        zmq_z85_decode(cv->peers[cv->npeers++], key);
    }
    fclose(f);
    return rc;
}

static bool s_admitted(const struct curve *cv, const uint8_t *key, size_t len)
{
    if (len != 32) {
        return false;
    }
    for (size_t i = 0; i < cv->npeers; i++) {
        if (memcmp(cv->peers[i], key, 32) == 0) {
            return true;
        }
    }
    return false;
}

/* Receives one frame into buf[n]; returns its size or -1. */
static int s_frame(void *sock, void *buf, size_t n, bool *more)
{
    int r = zmq_recv(sock, buf, n, 0);
    int m = 0;
    size_t ml = sizeof m;
    zmq_getsockopt(sock, ZMQ_RCVMORE, &m, &ml);
    *more = m != 0;
    return r;
}

static void *s_zap(void *arg)
{
    struct curve *cv = arg;
    while (!atomic_load(&cv->stop)) {
        zmq_pollitem_t it = { cv->zap, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, 100) <= 0) {
            continue;
        }
        /* version, request id, domain, address, identity, mechanism, credentials */
        char f[7][256];
        int len[7] = { 0 };
        bool more = true;
        int nf = 0;
        while (more && nf < 7) {
            len[nf] = s_frame(cv->zap, f[nf], sizeof f[nf], &more);
            if (len[nf] < 0) {
                break;
            }
            nf++;
        }
        while (more) {
            char junk[256];
            if (s_frame(cv->zap, junk, sizeof junk, &more) < 0) {
                break;
            }
        }
        if (nf < 6) {
            continue;
        }
        bool curve = len[5] == 5 && memcmp(f[5], "CURVE", 5) == 0;
        bool ok = curve && nf == 7 && s_admitted(cv, (const uint8_t *)f[6], (size_t)len[6]);
        const char *code = ok ? "200" : "400";
        const char *text = ok ? "OK" : "client key not admitted";
        if (!ok) {
            char shown[41] = "";
            if (curve && nf == 7 && len[6] == 32) {
                zmq_z85_encode(shown, (const uint8_t *)f[6], 32);
            }
            log_msg(LOG_WARN, "refused a %.*s client key=%s address=%.*s", len[5], f[5],
                    shown[0] ? shown : "-", len[3] < 64 ? len[3] : 64, f[3]);
        }
        zmq_send(cv->zap, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(cv->zap, f[1], (size_t)len[1], ZMQ_SNDMORE);
        zmq_send(cv->zap, code, 3, ZMQ_SNDMORE);
        zmq_send(cv->zap, text, strlen(text), ZMQ_SNDMORE);
        zmq_send(cv->zap, "", 0, ZMQ_SNDMORE);
        zmq_send(cv->zap, "", 0, 0);
    }
    return NULL;
}

struct curve *curve_start(void *zctx, const char *key_path, const char *server_path,
                          const char *peers_path, char *err, size_t n)
{
    struct curve *cv = calloc(1, sizeof *cv);
    if (cv == NULL) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    if (!zmq_has("curve")) {
        snprintf(err, n, "this libzmq was built without CURVE");
        goto fail;
    }
    if (curve_read_keys(key_path, cv->pub, cv->sec, err, n) != 0) {
        goto fail;
    }
    if (server_path != NULL && server_path[0] != '\0'
        && curve_read_keys(server_path, cv->server, NULL, err, n) != 0) {
        goto fail;
    }
    if (peers_path != NULL && peers_path[0] != '\0') {
        if (s_read_peers(cv, peers_path, err, n) != 0) {
            goto fail;
        }
        cv->zap = zmq_socket(zctx, ZMQ_REP);
        int linger = 0;
        zmq_setsockopt(cv->zap, ZMQ_LINGER, &linger, sizeof linger);
        if (cv->zap == NULL || zmq_bind(cv->zap, "inproc://zeromq.zap.01") != 0) {
            snprintf(err, n, "ZAP handler: %s", zmq_strerror(zmq_errno()));
            goto fail;
        }
        if (pthread_create(&cv->thread, NULL, s_zap, cv) != 0) {
            snprintf(err, n, "ZAP handler: cannot start a thread");
            goto fail;
        }
        cv->running = true;
    }
    return cv;
fail:
    curve_stop(&cv);
    return NULL;
}

int curve_apply(const struct curve *cv, void *sock, bool binding, char *err, size_t n)
{
    int one = 1;
    if (binding) {
        if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0
            || zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, cv->sec, CURVE_KEY_LEN) != 0) {
            snprintf(err, n, "CURVE server: %s", zmq_strerror(zmq_errno()));
            return -1;
        }
        if (cv->zap != NULL) {
            /* Ask ZAP even for... every client: ZeroMQ does so when a domain is set. */
            zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "omnibus", 7);
        }
        return 0;
    }
    if (cv->server[0] == '\0') {
        snprintf(err, n, "connecting over CURVE needs the server's public key (--curve-server)");
        return -1;
    }
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, cv->server, CURVE_KEY_LEN) != 0
        || zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, cv->pub, CURVE_KEY_LEN) != 0
        || zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, cv->sec, CURVE_KEY_LEN) != 0) {
        snprintf(err, n, "CURVE client: %s", zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

void curve_stop(struct curve **cvp)
{
    struct curve *cv = *cvp;
    if (cv == NULL) {
        return;
    }
    if (cv->running) {
        atomic_store(&cv->stop, true);
        pthread_join(cv->thread, NULL);
    }
    if (cv->zap != NULL) {
        zmq_close(cv->zap);
    }
    explicit_bzero(cv->sec, sizeof cv->sec);
    free(cv->peers);
    free(cv);
    *cvp = NULL;
}

int curve_keygen_main(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: omni-keygen NAME\n"
                        "Writes a CurveZMQ key pair: NAME.key (public and secret, mode 0600; the\n"
                        "tool's --curve-key) and NAME.pub (public: for the peers' --curve-peers\n"
                        "or --curve-server). Prints the public key.\n");
        return argc == 2 && strcmp(argv[1], "--help") == 0 ? 0 : 64;
    }
    char pub[CURVE_KEY_LEN + 1], sec[CURVE_KEY_LEN + 1];
    if (zmq_curve_keypair(pub, sec) != 0) {
        fprintf(stderr, "omni-keygen: %s\n", zmq_strerror(zmq_errno()));
        return 69;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s.key", argv[1]);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        fprintf(stderr, "omni-keygen: %s: %s\n", path, strerror(errno));
        return 73;
    }
    dprintf(fd, "# CurveZMQ key pair: keep secret\npublic %s\nsecret %s\n", pub, sec);
    close(fd);
    snprintf(path, sizeof path, "%s.pub", argv[1]);
    FILE *f = fopen(path, "wx");
    if (f == NULL) {
        fprintf(stderr, "omni-keygen: %s: %s\n", path, strerror(errno));
        return 73;
    }
    fprintf(f, "public %s\n", pub);
    fclose(f);
    explicit_bzero(sec, sizeof sec);
    printf("%s\n", pub);
    return 0;
}
