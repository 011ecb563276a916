#include "soak_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

long soak_raise_nofile(long want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    rlim_t target = (rlim_t)want;
    if (rl.rlim_max != RLIM_INFINITY && target > rl.rlim_max)
        target = rl.rlim_max;
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= target)
        return rl.rlim_cur == RLIM_INFINITY ? want : (long)rl.rlim_cur;
    rl.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        fprintf(stderr, "setrlimit(NOFILE, %ld): %s\n", (long)target, strerror(errno));
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    return (long)rl.rlim_cur;
}

long soak_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

/* inode -> which kind of peer; sorted for bsearch */
struct sock_class {
    unsigned long inode;
    int kind; /* 1 client, 2 upstream, 3 redis, 0 other */
};

static int cmp_inode(const void *a, const void *b)
{
    unsigned long x = ((const struct sock_class *)a)->inode;
    unsigned long y = ((const struct sock_class *)b)->inode;
    return x < y ? -1 : x > y;
}

static void read_tcp_table(const char *path, int lport_want, int up_port, int redis_port,
                           struct sock_class **v, size_t *n, size_t *cap)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return; /* no IPv6 in this namespace: nothing to add */
    char line[512];
    if (fgets(line, sizeof line, f) == NULL) { /* the header line */
        fclose(f);
        return;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned lport = 0, rport = 0, st = 0;
        unsigned long inode = 0;
        /* sl: local:port remote:port st tx:rx tr:when retrnsmt uid timeout inode */
        if (sscanf(line,
                   " %*d: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%x %x %*x:%*x %*x:%*x %*x %*u %*u %lu",
                   &lport, &rport, &st, &inode) != 4 ||
            inode == 0)
            continue;
        int kind = 0;
        if (st != 0x0A && lport_want > 0 && (int)lport == lport_want) /* 0x0A = LISTEN */
            kind = 1;
        else if (up_port > 0 && (int)rport == up_port)
            kind = 2;
        else if (redis_port > 0 && (int)rport == redis_port)
            kind = 3;
        if (kind == 0)
            continue;
        if (*n == *cap) {
            size_t nc = *cap != 0 ? *cap * 2 : 1024;
            struct sock_class *nv = realloc(*v, nc * sizeof *nv);
            if (nv == NULL)
                break;
            *v = nv;
            *cap = nc;
        }
        (*v)[(*n)++] = (struct sock_class){inode, kind};
    }
    fclose(f);
}

bool soak_count_fds(pid_t pid, int listen_port, int upstream_port, int redis_port,
                    struct soak_fds *out)
{
    memset(out, 0, sizeof *out);
    char path[64];
    struct sock_class *v = NULL;
    size_t n = 0, cap = 0;
    snprintf(path, sizeof path, "/proc/%d/net/tcp", (int)pid);
    read_tcp_table(path, listen_port, upstream_port, redis_port, &v, &n, &cap);
    snprintf(path, sizeof path, "/proc/%d/net/tcp6", (int)pid);
    read_tcp_table(path, listen_port, upstream_port, redis_port, &v, &n, &cap);
    if (n > 0)
        qsort(v, n, sizeof *v, cmp_inode);

    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL) {
        free(v);
        return false;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        out->total++;
        char link[320], target[64];
        snprintf(link, sizeof link, "%s/%s", path, de->d_name);
        ssize_t len = readlink(link, target, sizeof target - 1);
        if (len <= 0)
            continue; /* closed between readdir and readlink */
        target[len] = '\0';
        unsigned long inode = 0;
        if (sscanf(target, "socket:[%lu]", &inode) != 1 || n == 0)
            continue;
        struct sock_class key = {inode, 0};
        const struct sock_class *hit = bsearch(&key, v, n, sizeof *v, cmp_inode);
        if (hit == NULL)
            continue;
        if (hit->kind == 1)
            out->client++;
        else if (hit->kind == 2)
            out->upstream++;
        else if (hit->kind == 3)
            out->redis++;
    }
    closedir(d);
    free(v);
    return true;
}

double soak_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

pid_t soak_spawn(char *const argv[], const char *log_path)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1); /* the parent is already gone */
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd != -1) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    execv(argv[0], argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

long soak_env_long(const char *name, long def, long lo, long hi)
{
    const char *s = getenv(name);
    if (s == NULL || *s == '\0')
        return def;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "%s=%s ignored (want an integer in %ld..%ld), using %ld\n", name, s, lo, hi,
                def);
        return def;
    }
    return v;
}
