/* omni-ingest-mail — e-mail into the spool, then envelopes out: one
 * message on stdin (an MTA pipe) or an IMAP mailbox. The logic is
 * lib/imap.c (the stage and the IMAP client) and lib/mail.c (MIME). */
#include "imap.h"

int main(int argc, char **argv)
{
    return stage_main(imap_stage(), argc, argv);
}
