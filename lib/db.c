/* db — small sqlite helpers; see db.h. */
#include "db.h"

#include <stdio.h>

int db_exec(sqlite3 *db, const char *sql, char *err, size_t n)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        snprintf(err, n, "%s", msg ? msg : sqlite3_errstr(rc));
    }
    sqlite3_free(msg);
    return rc;
}

int64_t db_query_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return v;
}
