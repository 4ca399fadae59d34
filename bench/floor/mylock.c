/* The least a lock client per run can do on MySQL/MariaDB, for
 * bench/floor.sh: one connection (libmariadb), a named lock taken with
 * GET_LOCK by one bound statement (waiting if held), the command run (fork,
 * exec, wait), the lock given back, the connection closed. No lease, no
 * fencing, no line, no liveness: a floor to measure against, not a tool.
 * Takes dlock's argv:
 *   mylock --backend mysql://USER:PASS@HOST:PORT/DB run --key KEY -- CMD...
 * Build: cc -O2 -o mylock mylock.c $(mariadb_config --cflags --libs) */
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int step(MYSQL *c, const char *sql, const char *key) {
    MYSQL_STMT *s = mysql_stmt_init(c);
    MYSQL_BIND b;
    memset(&b, 0, sizeof b);
    b.buffer_type = MYSQL_TYPE_STRING;
    b.buffer = (void *)key;
    b.buffer_length = strlen(key);
    int ok = s && !mysql_stmt_prepare(s, sql, strlen(sql)) && !mysql_stmt_bind_param(s, &b)
             && !mysql_stmt_execute(s) && !mysql_stmt_store_result(s);
    if (!ok) fprintf(stderr, "mylock: %s\n", s ? mysql_stmt_error(s) : mysql_error(c));
    if (s) mysql_stmt_close(s);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 8 || strcmp(argv[1], "--backend") || strcmp(argv[4], "--key") || strcmp(argv[6], "--")) {
        fprintf(stderr, "usage: mylock --backend mysql://USER:PASS@HOST:PORT/DB run --key KEY -- CMD...\n");
        return 64;
    }
    char user[64], pass[64], host[64], db[64];
    unsigned port;
    if (sscanf(argv[2], "mysql://%63[^:]:%63[^@]@%63[^:]:%u/%63s", user, pass, host, &port, db) != 5) {
        fprintf(stderr, "mylock: want mysql://USER:PASS@HOST:PORT/DB\n");
        return 64;
    }
    MYSQL *c = mysql_init(NULL);
    if (!mysql_real_connect(c, host, user, pass, db, port, NULL, 0)) {
        fprintf(stderr, "mylock: %s\n", mysql_error(c));
        return 69;
    }
    if (!step(c, "SELECT GET_LOCK(?, -1)", argv[5])) return 69;
    pid_t p = fork();
    if (p == 0) { execvp(argv[7], argv + 7); _exit(127); }
    int st = 0;
    waitpid(p, &st, 0);
    step(c, "SELECT RELEASE_LOCK(?)", argv[5]);
    mysql_close(c);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
