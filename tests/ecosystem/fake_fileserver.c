/* A tiny HTTP/1.1 file server shaped like the Hugging Face hub, for `tiergate pull` tests:
 *
 *   GET|HEAD /<repo>/resolve/main/<name>  -> 302 to /cdn/<name>, with X-Linked-Etag: "<sha256>"
 *                                            and X-Linked-Size (what the hub sends for LFS files)
 *   GET|HEAD /cdn/<name>                  -> the file; honours Range: bytes=N- and bytes=N-M (206),
 *                                            416 past the end
 *   anything else                         -> 404
 *
 * Scriptable failures: --cut-after BYTES --cuts K closes the connection after BYTES body bytes in
 * the first K file responses (headers promise the full length, so the client sees a cut
 * transfer). --no-range answers every file request 200 with the whole file. One line per request
 * goes to stdout: "GET /cdn/x range=N- status=206 sent=B cut=0|1".
 *
 * usage: tg-fake-fileserver --port P --file PATH [--etag HEX] [--cut-after N] [--cuts K]
 *        [--no-range] [--fail-status CODE]
 * One connection at a time (tests are sequential); runs until killed. */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *g_file;
static const char *g_etag = "";
static uint64_t g_cut_after;
static long g_cuts;
static bool g_no_range;
static int g_fail_status; /* answer file requests with this status (0: serve the file) */

static bool send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k == -1) {
            if (errno == EINTR)
                continue;
            return false;
        }
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static void reply_simple(int fd, int status, const char *reason, const char *extra)
{
    char h[1024];
    int n =
        snprintf(h, sizeof h, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n%s\r\n",
                 status, reason, extra);
    if (n > 0 && (size_t)n < sizeof h)
        send_all(fd, h, (size_t)n);
}

/* "bytes=N-" or "bytes=N-M"; false when absent or malformed (then the whole file is sent). */
static bool parse_range(const char *req, uint64_t *from, uint64_t *to, bool *has_to)
{
    const char *p = strcasestr(req, "\r\nRange:");
    if (p == NULL)
        return false;
    p += 8;
    while (*p == ' ')
        p++;
    if (strncmp(p, "bytes=", 6) != 0)
        return false;
    p += 6;
    char *end;
    errno = 0;
    unsigned long long a = strtoull(p, &end, 10);
    if (errno != 0 || end == p || *end != '-')
        return false;
    *from = a;
    p = end + 1;
    *has_to = false;
    if (*p >= '0' && *p <= '9') {
        unsigned long long b = strtoull(p, &end, 10);
        if (errno != 0 || b < a)
            return false;
        *to = b;
        *has_to = true;
    }
    return true;
}

static void serve_file(int fd, const char *method, const char *path, const char *req)
{
    FILE *f = fopen(g_file, "rb");
    struct stat st;
    if (f == NULL || fstat(fileno(f), &st) == -1) {
        reply_simple(fd, 500, "Internal Server Error", "");
        if (f != NULL)
            fclose(f);
        return;
    }
    uint64_t size = (uint64_t)st.st_size, from = 0, to = size - 1;
    bool has_to = false;
    bool ranged = !g_no_range && parse_range(req, &from, &to, &has_to);
    if (ranged && !has_to)
        to = size - 1;
    if (ranged && (from >= size || to >= size)) {
        char extra[128];
        snprintf(extra, sizeof extra, "Content-Range: bytes */%" PRIu64 "\r\n", size);
        reply_simple(fd, 416, "Range Not Satisfiable", extra);
        printf("%s %s range=%" PRIu64 "- status=416 sent=0 cut=0\n", method, path, from);
        fclose(f);
        return;
    }
    uint64_t len = size == 0 ? 0 : to - from + 1;
    char h[1024];
    int n;
    if (ranged)
        n = snprintf(h, sizeof h,
                     "HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n"
                     "Accept-Ranges: bytes\r\nContent-Length: %" PRIu64 "\r\n"
                     "Content-Range: bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64 "\r\n"
                     "Connection: close\r\n\r\n",
                     len, from, to, size);
    else
        n = snprintf(h, sizeof h,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     "Accept-Ranges: bytes\r\nContent-Length: %" PRIu64
                     "\r\nConnection: close\r\n\r\n",
                     len);
    send_all(fd, h, (size_t)n);
    uint64_t sent = 0;
    bool cut = false;
    if (strcmp(method, "GET") == 0) {
        uint64_t limit = len;
        if (g_cuts > 0 && g_cut_after < len) {
            limit = g_cut_after;
            cut = true;
            g_cuts--;
        }
        if (fseeko(f, (off_t)from, SEEK_SET) == 0) {
            char buf[65536];
            while (sent < limit) {
                size_t want = limit - sent < sizeof buf ? (size_t)(limit - sent) : sizeof buf;
                size_t k = fread(buf, 1, want, f);
                if (k == 0 || !send_all(fd, buf, k))
                    break;
                sent += k;
            }
        }
    }
    printf("%s %s range=%s%" PRIu64 "- status=%d sent=%" PRIu64 " cut=%d\n", method, path,
           ranged ? "" : "none:", from, ranged ? 206 : 200, sent, cut ? 1 : 0);
    fclose(f);
}

static void handle(int fd)
{
    char req[8192];
    size_t n = 0;
    while (n < sizeof req - 1) {
        ssize_t k = recv(fd, req + n, sizeof req - 1 - n, 0);
        if (k <= 0)
            return;
        n += (size_t)k;
        req[n] = '\0';
        if (strstr(req, "\r\n\r\n") != NULL)
            break;
    }
    char method[16], path[2048];
    if (sscanf(req, "%15s %2047s", method, path) != 2) {
        reply_simple(fd, 400, "Bad Request", "");
        return;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        reply_simple(fd, 405, "Method Not Allowed", "");
        return;
    }
    const char *rm = strstr(path, "/resolve/main/");
    if (rm != NULL) {
        struct stat st;
        char extra[1024];
        snprintf(extra, sizeof extra,
                 "Location: /cdn/%s\r\nX-Linked-Etag: \"%s\"\r\nX-Linked-Size: %lld\r\n",
                 rm + strlen("/resolve/main/"), g_etag,
                 stat(g_file, &st) == 0 ? (long long)st.st_size : 0LL);
        reply_simple(fd, 302, "Found", extra);
        printf("%s %s status=302\n", method, path);
        return;
    }
    if (strncmp(path, "/cdn/", 5) == 0) {
        if (g_fail_status != 0) {
            reply_simple(fd, g_fail_status, "Scripted Failure", "");
            printf("%s %s status=%d\n", method, path, g_fail_status);
            return;
        }
        serve_file(fd, method, path, req);
        return;
    }
    reply_simple(fd, 404, "Not Found", "");
    printf("%s %s status=404\n", method, path);
}

int main(int argc, char **argv)
{
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--file") == 0 && i + 1 < argc)
            g_file = argv[++i];
        else if (strcmp(argv[i], "--etag") == 0 && i + 1 < argc)
            g_etag = argv[++i];
        else if (strcmp(argv[i], "--cut-after") == 0 && i + 1 < argc)
            g_cut_after = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--cuts") == 0 && i + 1 < argc)
            g_cuts = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--no-range") == 0)
            g_no_range = true;
        else if (strcmp(argv[i], "--fail-status") == 0 && i + 1 < argc)
            g_fail_status = (int)strtol(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "tg-fake-fileserver: bad argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (g_file == NULL || port <= 0 || port > 65535) {
        fprintf(stderr, "usage: tg-fake-fileserver --port P --file PATH [--etag HEX] "
                        "[--cut-after N] [--cuts K] [--no-range] [--fail-status CODE]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls == -1) {
        perror("socket");
        return 1;
    }
    int one = 1;
    if (setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == -1)
        perror("setsockopt");
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) == -1 || listen(ls, 16) == -1) {
        perror("bind/listen");
        return 1;
    }
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd == -1) {
            if (errno == EINTR)
                continue;
            perror("accept");
            return 1;
        }
        handle(fd);
        if (shutdown(fd, SHUT_WR) == -1 && errno != ENOTCONN)
            perror("shutdown");
        /* drain what the client still sends so close() does not turn into a reset that could
         * discard the bytes we sent */
        char junk[4096];
        struct timeval tv = {.tv_sec = 1};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        while (recv(fd, junk, sizeof junk, 0) > 0) {
        }
        close(fd);
    }
}
