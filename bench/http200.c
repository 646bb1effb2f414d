/* http200 — the HTTP limit for the webhook benchmark: libmicrohttpd with
 * one epoll thread, as omni-ingest-webhook runs it, reading each request's
 * body and answering 200 without parsing, checking or storing anything.
 *   http200 PORT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

static enum MHD_Result s_access(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **con_cls)
{
    (void)cls;
    (void)url;
    (void)method;
    (void)version;
    (void)upload;
    if (*con_cls == NULL) {
        *con_cls = conn;        /* the first call only announces the request */
        return MHD_YES;
    }
    if (*upload_size != 0) {
        *upload_size = 0;       /* body taken, not looked at */
        return MHD_YES;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: http200 PORT\n");
        return 64;
    }
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD, (uint16_t)atoi(argv[1]),
                                            NULL, NULL, s_access, NULL, MHD_OPTION_END);
    if (d == NULL) {
        perror("http200");
        return 69;
    }
    pause();
    MHD_stop_daemon(d);
    return 0;
}
