/* The least a lock client per run can do on PostgreSQL, for bench/floor.sh:
 * one connection (libpq), a session advisory lock taken by one bound
 * statement (waiting if held), the command run (fork, exec, wait), the lock
 * given back, the connection closed. No lease, no fencing, no line, no
 * liveness: a floor to measure against, not a tool. Takes dlock's argv:
 *   pglock --backend URL run --key KEY -- CMD...
 * Build: cc -O2 -o pglock pglock.c -I/usr/include/postgresql -lpq */
#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int step(PGconn *c, const char *sql, const char *key) {
    const char *v[1] = {key};
    PGresult *r = PQexecParams(c, sql, 1, NULL, v, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok) fprintf(stderr, "pglock: %s", PQerrorMessage(c));
    PQclear(r);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 8 || strcmp(argv[1], "--backend") || strcmp(argv[4], "--key") || strcmp(argv[6], "--")) {
        fprintf(stderr, "usage: pglock --backend URL run --key KEY -- CMD...\n");
        return 64;
    }
    PGconn *c = PQconnectdb(argv[2]);
    if (PQstatus(c) != CONNECTION_OK) { fprintf(stderr, "pglock: %s", PQerrorMessage(c)); return 69; }
    if (!step(c, "SELECT pg_advisory_lock(hashtext($1))", argv[5])) return 69;
    pid_t p = fork();
    if (p == 0) { execvp(argv[7], argv + 7); _exit(127); }
    int st = 0;
    waitpid(p, &st, 0);
    step(c, "SELECT pg_advisory_unlock(hashtext($1))", argv[5]);
    PQfinish(c);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
