#include "tg_testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

extern char **environ;

int tg_test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd == -1)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

pid_t tg_test_spawn(char *const argv[], const char *const envp_extra[], const char *log_path)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* The child dies with the test process: a ctest timeout or a failed assertion leaves no
     * tiergate / fake upstream / redis-server behind. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1); /* the parent is already gone */
    if (log_path != NULL) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd != -1) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
    }
    for (size_t i = 0; envp_extra != NULL && envp_extra[i] != NULL; i++)
        putenv((char *)envp_extra[i]);
    execvp(argv[0], argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

bool tg_test_wait_port(int port, int timeout_ms)
{
    long end = now_ms() + timeout_ms;
    while (now_ms() < end) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
        close(fd);
        if (rc == 0)
            return true;
        usleep(20000);
    }
    return false;
}

int tg_test_stop(pid_t pid, int sig, int timeout_ms)
{
    if (pid <= 0)
        return -1;
    kill(pid, sig);
    long end = now_ms() + timeout_ms;
    int status;
    while (now_ms() < end) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r == -1)
            return -1;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    return waitpid(pid, &status, 0) == pid ? status : -1;
}

static bool redis_spawn(struct tg_test_redis *r)
{
    char port[16], log[200];
    snprintf(port, sizeof port, "%d", r->port);
    snprintf(log, sizeof log, "%s/redis.log", r->dir);
    char *argv[] = {"/usr/bin/redis-server", "--port", port, "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", r->dir, NULL};
    r->pid = tg_test_spawn(argv, NULL, log);
    if (tg_test_wait_port(r->port, 5000))
        return true;
    tg_test_stop(r->pid, SIGKILL, 1000);
    r->pid = 0;
    return false;
}

bool tg_test_redis_start(struct tg_test_redis *r)
{
    snprintf(r->dir, sizeof r->dir, "/tmp/tg-redis-XXXXXX");
    if (mkdtemp(r->dir) == NULL)
        return false;
    for (int attempt = 0; attempt < 5; attempt++) {
        r->port = tg_test_free_port();
        if (redis_spawn(r))
            return true;
    }
    return false;
}

bool tg_test_redis_restart(struct tg_test_redis *r)
{
    /* The old listener's port can linger briefly after a SIGKILL: retry a few times. */
    for (int attempt = 0; attempt < 5; attempt++)
        if (redis_spawn(r))
            return true;
    return false;
}

void tg_test_redis_stop(struct tg_test_redis *r)
{
    tg_test_stop(r->pid, SIGTERM, 5000);
    char path[200];
    snprintf(path, sizeof path, "%s/redis.log", r->dir);
    unlink(path);
    rmdir(r->dir);
}

struct grow {
    char *p;
    size_t n;
    const char *match; /* tg_test_http_watch: call on_match once the body contains it */
    void (*on_match)(void *user);
    void *user;
};

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct grow *g = ud;
    size_t n = size * nmemb;
    char *q = realloc(g->p, g->n + n + 1);
    if (q == NULL)
        return 0;
    memcpy(q + g->n, ptr, n);
    g->n += n;
    q[g->n] = '\0';
    g->p = q;
    if (g->match != NULL && strstr(q, g->match) != NULL) {
        g->match = NULL;
        g->on_match(g->user);
    }
    return n;
}


static int http_request(const char *method, const char *url, const char *const *headers,
                        const char *body, long timeout_ms, const char *match,
                        void (*on_match)(void *user), void *user, struct tg_test_response *out,
                        bool *timed_out)
{
    memset(out, 0, sizeof *out);
    if (timed_out != NULL)
        *timed_out = false;
    CURL *c = curl_easy_init();
    if (c == NULL)
        return -1;
    struct grow b = {.match = on_match != NULL ? match : NULL, .on_match = on_match, .user = user};
    struct grow h = {0};
    struct curl_slist *hl = NULL;
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++)
        hl = curl_slist_append(hl, headers[i]);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    if (rc == CURLE_OPERATION_TIMEDOUT && timed_out != NULL)
        *timed_out = true;
    out->body = b.p != NULL ? b.p : calloc(1, 1);
    out->body_len = b.n;
    out->headers = h.p != NULL ? h.p : calloc(1, 1);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    return rc == CURLE_OK ? 0 : -1;
}

int tg_test_http(const char *method, const char *url, const char *const *headers, const char *body,
                 struct tg_test_response *out)
{
    return http_request(method, url, headers, body, 120000L, NULL, NULL, NULL, out, NULL);
}

int tg_test_http_bounded(const char *method, const char *url, const char *const *headers,
                         const char *body, long timeout_ms, struct tg_test_response *out,
                         bool *timed_out)
{
    return http_request(method, url, headers, body, timeout_ms, NULL, NULL, NULL, out, timed_out);
}

int tg_test_http_watch(const char *method, const char *url, const char *const *headers,
                       const char *body, const char *match, void (*on_match)(void *user),
                       void *user, struct tg_test_response *out)
{
    return http_request(method, url, headers, body, 120000L, match, on_match, user, out, NULL);
}

void tg_test_response_free(struct tg_test_response *r)
{
    free(r->body);
    free(r->headers);
    r->body = r->headers = NULL;
}

bool tg_test_header(const struct tg_test_response *r, const char *name, char *buf, size_t buflen)
{
    size_t nl = strlen(name);
    for (const char *line = r->headers; line != NULL && *line != '\0';) {
        const char *eol = strstr(line, "\r\n");
        if (eol == NULL)
            eol = line + strlen(line);
        if ((size_t)(eol - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ')
                v++;
            snprintf(buf, buflen, "%.*s", (int)(eol - v), v);
            return true;
        }
        line = *eol != '\0' ? eol + 2 : eol;
    }
    return false;
}

const char *tg_test_write_temp(const char *name, const char *text)
{
    static char paths[8][256];
    static int slot;
    char *path = paths[slot++ % 8];
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/tg-test-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return NULL;
    snprintf(path, 256, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return NULL;
    fputs(text, f);
    fclose(f);
    return path;
}

char *tg_test_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *p = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0)
        p = malloc((size_t)n + 1);
    if (p != NULL && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p == NULL)
        return NULL;
    p[n] = '\0';
    if (len != NULL)
        *len = (size_t)n;
    return p;
}

char *tg_test_read_log(const char *path)
{
    char *p = tg_test_slurp(path, NULL);
    return p != NULL ? p : calloc(1, 1);
}

double tg_test_metric_value(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return -1;
}
