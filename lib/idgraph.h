/* idgraph — links and customers, part of the identity library (see
 * identity.h, iddb.h). A link that joins two customers merges them into
 * the older id; a link that would put two different verified handles of
 * one scheme into one customer is refused (a conflict) and recorded; an
 * unlink splits a customer into the connected components of its remaining
 * active links (union-find), split parts taking back their old ids. Every
 * function here runs inside an open transaction. */
#ifndef OMNI_IDGRAPH_H
#define OMNI_IDGRAPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "identity.h"

/* Who asks for a link. */
enum idgraph_mode {
    IDGRAPH_AUTO,     /* a channel fact or a link event: never undoes a person's unlink */
    IDGRAPH_AGENT,    /* a person (CLI): may bring back a removed or refused link */
};

/* A list of strings owned by the list. */
struct idgraph_strs {
    char **v;           /* the strings */
    size_t n;           /* how many */
    size_t cap;         /* room */
};

void idgraph_strs_free(struct idgraph_strs *l);

/* The handles of customer c that an active verified link names, added to out. */
int idgraph_verified(struct identity *id, const char *c, struct idgraph_strs *out);
/* Links normalised handles a and b with provenance p. Returns IDENTITY_OK
 * (r->customer is theirs; r->merged and r->other when two were joined),
 * _CONFLICT (refused and recorded, unless force), or an error. */
int idgraph_link(struct identity *id, const char *a, const char *b, const struct identity_prov *p,
                 enum idgraph_mode mode, bool force, struct identity_result *r);
/* Splits customer c into the connected components of its active links
 * (r->parts says how many); new customers are created at ts. */
int idgraph_split(struct identity *id, const char *c, uint64_t ts, struct identity_result *r);

#endif
