/* curve — CurveZMQ for tcp endpoints between hosts (DESIGN.md: plain tcp is
 * for loopback and tests only). A tool given --curve-key (its own key pair)
 * encrypts every tcp endpoint the runner opens; a bound endpoint given
 * --curve-peers (a file of public keys) admits only those clients, through
 * a ZAP handler; a connecting endpoint checks the server against
 * --curve-server (the server's public key).
 *
 * Key files are text: "public Z85KEY" and "secret Z85KEY" lines (omni-keygen
 * writes NAME.key with both, mode 0600, and NAME.pub with the public one). */
#ifndef OMNI_CURVE_H
#define OMNI_CURVE_H

#include <stdbool.h>
#include <stddef.h>

#define CURVE_KEY_LEN 40    /* a Z85-encoded 32-byte key */

struct curve;

/* Reads keys from a key file: pub (always) and sec (when sec is not NULL,
 * the file must hold one). Returns 0, or -1 with a reason in err[n]. */
int curve_read_keys(const char *path, char pub[CURVE_KEY_LEN + 1], char sec[CURVE_KEY_LEN + 1],
                    char *err, size_t n);
/* Starts CurveZMQ for a process: own key pair from key_path, the server key
 * from server_path (may be NULL), the admitted clients from peers_path (may
 * be NULL: any client with a key is admitted, the traffic still
 * encrypted). Starts the ZAP handler on zctx when peers are given. Returns
 * NULL with a reason in err[n]. */
struct curve *curve_start(void *zctx, const char *key_path, const char *server_path,
                          const char *peers_path, char *err, size_t n);
/* Sets a socket's CURVE options; call before bind or connect. A connecting
 * socket needs the server's key. Returns 0, or -1 with a reason. */
int curve_apply(const struct curve *cv, void *sock, bool binding, char *err, size_t n);
/* Stops the ZAP handler and forgets the keys. Call before zmq_ctx_term. */
void curve_stop(struct curve **cv);
/* omni-keygen: writes PREFIX.key and PREFIX.pub; returns an exit code. */
int curve_keygen_main(int argc, char **argv);

#endif
