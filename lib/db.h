/* db — small sqlite helpers shared by the tools that own a database. */
#ifndef OMNI_DB_H
#define OMNI_DB_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

/* Runs SQL (one or more statements); on failure puts sqlite's message in
 * err[n]. Returns the sqlite result code. */
int db_exec(sqlite3 *db, const char *sql, char *err, size_t n);
/* The integer a one-row pragma or query gives, or -1. */
int64_t db_query_int(sqlite3 *db, const char *sql);

#endif
