/* HTTPS on the listener (server.tls), against the real tiergate binary on the tiny model with the
 * fake upstream as its remote provider.
 *
 * A CA and server certificates are generated at test time with the openssl CLI; clients verify
 * against that CA: libcurl for HTTP (keep-alive, chat local and remote, streams, body limit), a
 * raw OpenSSL client for what libcurl hides (the certificate's serial, half-sent requests), and
 * the official openai npm client when tests/conformance/node_modules is installed.
 * The config loader's checks of the files are tested on tg_config_load directly.
 * Every wait is bounded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tg/config.h"
#include "tg/err.h"
#include "tg_testlib.h"

#define TIERGATE TG_BINARY_DIR "/gateway/tiergate"
#ifndef TG_FAKE_UPSTREAM
#define TG_FAKE_UPSTREAM TG_BINARY_DIR "/tests/tg-fake-upstream"
#endif
#define CONF_DIR TG_TEST_DIR "/conformance"
/* sha256("secret") */
#define KEY_SHA "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
#define MAX_BODY 65536

/* The environment shared by the tests, in the order they run. */
static struct {
    char dir[64];        /* temp dir: certificates, config, logs */
    char ca[128];        /* CA certificate the clients trust */
    char cert[128];      /* the path the config names (tests overwrite it, then SIGHUP) */
    char key[128];
    char cfg[128];
    char log[128];
    char fake_log[128];
    int port, fake_port;
    pid_t gw_pid, fake_pid;
    char base[64];       /* https://127.0.0.1:port */
} E;

/* ---- processes and files ---------------------------------------------------------------- */


/* Run a command to completion (bounded: openssl finishes in well under a second). */
static bool run_cmd(char *const argv[])
{
    char log[160];
    snprintf(log, sizeof log, "%s/openssl.log", E.dir);
    pid_t pid = tg_test_spawn(argv, NULL, log);
    int st = 0;
    if (pid == -1 || waitpid(pid, &st, 0) == -1)
        return false;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static bool write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return false;
    bool ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

static bool copy_file(const char *from, const char *to)
{
    char *text = tg_test_slurp(from, NULL);
    bool ok = text != NULL && write_file(to, text);
    free(text);
    return ok;
}

static void path_in(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", E.dir, name);
}

/* A P-256 key in dir/<name>.key and a certificate for localhost/127.0.0.1 signed by the CA with
 * the given serial in dir/<name>.pem. */
static bool make_server_cert(const char *name, const char *serial)
{
    char key[160], csr[160], pem[160], ext[160], cakey[160];
    snprintf(key, sizeof key, "%s/%s.key", E.dir, name);
    snprintf(csr, sizeof csr, "%s/%s.csr", E.dir, name);
    snprintf(pem, sizeof pem, "%s/%s.pem", E.dir, name);
    path_in(ext, sizeof ext, "san.ext");
    path_in(cakey, sizeof cakey, "ca.key");
    char *req[] = {"openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                   "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost", NULL};
    char *sign[] = {"openssl", "x509", "-req", "-in", csr, "-CA", E.ca, "-CAkey", cakey,
                    "-set_serial", (char *)serial, "-days", "2", "-extfile", ext, "-out", pem, NULL};
    return run_cmd(req) && run_cmd(sign);
}

static bool make_pki(void)
{
    char cakey[160], ext[160];
    path_in(cakey, sizeof cakey, "ca.key");
    path_in(ext, sizeof ext, "san.ext");
    path_in(E.ca, sizeof E.ca, "ca.pem");
    if (!write_file(ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n"))
        return false;
    char *ca[] = {"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-keyout", cakey, "-out", E.ca, "-days", "2", "-subj",
                  "/CN=tiergate test CA", NULL};
    return run_cmd(ca) && make_server_cert("one", "0x1001") && make_server_cert("two", "0x2002") &&
           make_server_cert("other", "0x3003");
}

static bool gw_alive(void)
{
    return E.gw_pid > 0 && waitpid(E.gw_pid, NULL, WNOHANG) == 0;
}

static bool log_wait(const char *text, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        char *log = tg_test_read_log(E.log);
        bool found = strstr(log, text) != NULL;
        free(log);
        if (found)
            return true;
        usleep(50000);
    }
    return false;
}

static int count_in_log(const char *text)
{
    char *log = tg_test_read_log(E.log);
    int n = 0;
    for (const char *p = strstr(log, text); p != NULL; p = strstr(p + 1, text))
        n++;
    free(log);
    return n;
}

/* ---- clients ----------------------------------------------------------------------------- */

struct resp {
    long status;
    long connects;  /* new connections this transfer opened (0 = reused a kept-alive one) */
    char *body;
    size_t len;
};

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    struct resp *r = ud;
    char *b = realloc(r->body, r->len + size * n + 1);
    if (b == NULL)
        return 0;
    memcpy(b + r->len, p, size * n);
    r->len += size * n;
    b[r->len] = '\0';
    r->body = b;
    return size * n;
}

/* One HTTPS request on handle h (reused handles keep their connection alive), verifying the
 * server against the test CA. Returns the CURLcode. */
static long timeout_ms = 120000; /* per transfer */

static CURLcode https(CURL *h, const char *method, const char *path, const char *body,
                      struct resp *out)
{
    memset(out, 0, sizeof *out);
    char url[256];
    snprintf(url, sizeof url, "%s%s", E.base, path);
    struct curl_slist *hdr = curl_slist_append(NULL, "Authorization: Bearer secret");
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CAINFO, E.ca);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    if (body == NULL)
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &out->connects);
    curl_slist_free_all(hdr);
    if (out->body == NULL)
        out->body = calloc(1, 1);
    return rc;
}

static long https_once(const char *method, const char *path, const char *body, struct resp *out)
{
    CURL *h = curl_easy_init();
    CURLcode rc = https(h, method, path, body, out);
    curl_easy_cleanup(h);
    return rc == CURLE_OK ? out->status : 0;
}

static int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd == -1 || connect(fd, (struct sockaddr *)&a, sizeof a) == -1) {
        if (fd != -1)
            close(fd);
        return -1;
    }
    struct timeval tv = {15, 0}; /* bounds every blocking read/write below */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

/* A TLS connection verified against the test CA (hostname localhost), or NULL. */
struct tls_conn {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
};

/* max_version: 0 = any, else e.g. TLS1_2_VERSION */
static bool tls_open_max(struct tls_conn *c, int max_version)
{
    memset(c, 0, sizeof *c);
    c->fd = tcp_connect(E.port);
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (c->fd == -1 || c->ctx == NULL || SSL_CTX_load_verify_locations(c->ctx, E.ca, NULL) != 1)
        return false;
    if (max_version != 0)
        SSL_CTX_set_max_proto_version(c->ctx, max_version);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    c->ssl = SSL_new(c->ctx);
    if (c->ssl == NULL)
        return false;
    SSL_set1_host(c->ssl, "localhost");
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    SSL_set_fd(c->ssl, c->fd);
    return SSL_connect(c->ssl) == 1;
}

static bool tls_open(struct tls_conn *c)
{
    return tls_open_max(c, 0);
}

/* Send SIGHUP and wait until the log has one more line containing text. */
static bool sighup_and_wait(const char *text)
{
    int before = count_in_log(text);
    if (kill(E.gw_pid, SIGHUP) != 0)
        return false;
    for (int i = 0; i < 200; i++) {
        if (count_in_log(text) > before)
            return true;
        usleep(50000);
    }
    return false;
}

static void tls_close(struct tls_conn *c)
{
    if (c->ssl != NULL)
        SSL_free(c->ssl);
    if (c->ctx != NULL)
        SSL_CTX_free(c->ctx);
    if (c->fd != -1)
        close(c->fd);
    ERR_clear_error();
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

/* Serial number of the certificate a new connection is served (0 when the handshake fails). */
static long served_serial(void)
{
    struct tls_conn c;
    long serial = 0;
    if (tls_open(&c)) {
        X509 *x = SSL_get1_peer_certificate(c.ssl);
        if (x != NULL)
            serial = ASN1_INTEGER_get(X509_get0_serialNumber(x));
        X509_free(x);
    }
    tls_close(&c);
    return serial;
}

/* ---- the gateway ------------------------------------------------------------------------- */

static const char *min_version = "1.2";
static bool with_tls = true;

static bool write_config(const char *cert, const char *key)
{
    char cfg[4096];
    snprintf(cfg, sizeof cfg,
             "server:\n"
             "  listen: 127.0.0.1:%d\n"
             "  io_threads: 2\n"
             "  header_timeout_ms: 1000\n"
             "  read_timeout_ms: 5000\n"
             "  drain_timeout_ms: 30000\n"
             "  max_body_bytes: %d\n"
             "  log_level: debug\n"
             "  api_keys:\n"
             "    - {name: test, sha256: " KEY_SHA "}\n"
             "%s%s%s%s%s%s%s"
             "redis:\n  enabled: false\n"
             "local:\n  model: %s\n  slots: 2\n  context: 4096\n  threads: 1\n"
             "providers:\n"
             "  fake:\n    kind: openai\n    base_url: http://127.0.0.1:%d/v1\n"
             "    api_key: sk-fake-provider-key\n    retries: 0\n"
             "models:\n"
             "  - {name: phi-3.5-mini, tier: local, target: engine}\n"
             "  - {name: gpt-fake, tier: remote, provider: fake, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6}\n"
             "  - {name: gpt-dead, tier: remote, provider: fake, upstream_model: \"script:status=503\"}\n"
             "  - {name: gpt-slow, tier: remote, provider: fake, upstream_model: \"script:delay_ms=4000\"}\n"
             "  - {name: gpt-trickle, tier: remote, provider: fake, upstream_model: \"script:chunk_delay_ms=300;chunks=6\"}\n"
             "aliases:\n  auto: {local: phi-3.5-mini, remote: gpt-fake}\n"
             "cache:\n  enabled: false\n",
             E.port, MAX_BODY, with_tls ? "  tls:\n    cert: " : "", with_tls ? cert : "",
             with_tls ? "\n    key: " : "", with_tls ? key : "",
             with_tls ? "\n    min_version: \"" : "", with_tls ? min_version : "",
             with_tls ? "\"\n" : "", TG_TINY_MODEL, E.fake_port);
    return write_file(E.cfg, cfg);
}

static int setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_ALL);
    snprintf(E.dir, sizeof E.dir, "/tmp/tg-tls-XXXXXX");
    if (mkdtemp(E.dir) == NULL)
        return -1;
    if (!make_pki()) {
        print_error("cannot generate test certificates with the openssl CLI (see %s/openssl.log)\n",
                    E.dir);
        return -1;
    }
    path_in(E.cert, sizeof E.cert, "server.pem");
    path_in(E.key, sizeof E.key, "server.key");
    path_in(E.cfg, sizeof E.cfg, "routes.yaml");
    path_in(E.log, sizeof E.log, "tiergate.log");
    path_in(E.fake_log, sizeof E.fake_log, "fake.log");
    char one_pem[160], one_key[160];
    path_in(one_pem, sizeof one_pem, "one.pem");
    path_in(one_key, sizeof one_key, "one.key");
    if (!copy_file(one_pem, E.cert) || !copy_file(one_key, E.key))
        return -1;

    E.fake_port = tg_test_free_port();
    char fport[16];
    snprintf(fport, sizeof fport, "%d", E.fake_port);
    char *fargv[] = {TG_FAKE_UPSTREAM, "--port", fport, NULL};
    E.fake_pid = tg_test_spawn(fargv, NULL, E.fake_log);
    if (!tg_test_wait_port(E.fake_port, 10000))
        return -1;
    E.port = tg_test_free_port();
    snprintf(E.base, sizeof E.base, "https://127.0.0.1:%d", E.port);
    if (!write_config(E.cert, E.key))
        return -1;
    char *argv[] = {TIERGATE, "--config", E.cfg, NULL};
    E.gw_pid = tg_test_spawn(argv, NULL, E.log);
    if (!tg_test_wait_port(E.port, 30000))
        return -1;
    for (int i = 0; i < 600; i++) {
        struct resp r;
        long st = https_once("GET", "/readyz", NULL, &r);
        free(r.body);
        if (st == 200)
            return 0;
        usleep(100000);
    }
    print_error("tiergate did not become ready over HTTPS; log %s\n", E.log);
    return -1;
}

static int teardown(void **state)
{
    if (E.gw_pid > 0)
        tg_test_stop(E.gw_pid, SIGKILL, 5000);
    if (E.fake_pid > 0)
        tg_test_stop(E.fake_pid, SIGTERM, 5000);
    curl_global_cleanup();
    /* The directory (certificates, logs) stays when a test failed, for the post-mortem. */
    if (getenv("TG_TLS_KEEP") == NULL && E.gw_pid == 0 && E.dir[0] != '\0') {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", E.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", E.dir);
    }
    return 0;
}

/* ---- tests ------------------------------------------------------------------------------- */

/* The loader's checks, on tg_config_load directly: each bad file is an error naming it. */
static void test_config_errors(void **state)
{
    char one_pem[160], one_key[160], other_key[160], garbage[160], missing[160];
    path_in(one_pem, sizeof one_pem, "one.pem");
    path_in(one_key, sizeof one_key, "one.key");
    path_in(other_key, sizeof other_key, "other.key");
    path_in(garbage, sizeof garbage, "garbage.pem");
    path_in(missing, sizeof missing, "missing.pem");
    assert_true(write_file(garbage, "this is not PEM\n"));
    struct {
        const char *cert, *key; /* NULL: key left out */
        const char *extra;      /* more lines of the tls: block */
        const char *want;       /* substring of the error (NULL: loads); %s = want_arg */
        const char *want_arg, *want_arg2;
        int line;               /* expected line of the error (0 = not checked) */
    } rows[] = {
        {one_pem, one_key, "", NULL, NULL, NULL, 0},
        {missing, one_key, "", "server.tls.cert: cannot read %s: No such file", missing, NULL, 6},
        {garbage, one_key, "", "server.tls.cert: %s holds no PEM certificate", garbage, NULL, 6},
        {one_pem, garbage, "", "server.tls.key: %s holds no unencrypted PEM private key", garbage,
         NULL, 7},
        {one_pem, other_key, "", "server.tls.key: %s does not match the certificate in %s",
         other_key, one_pem, 7},
        {one_pem, one_key, "    min_version: \"1.1\"\n", "min_version", NULL, NULL, 8},
        {one_pem, one_key, "    keyfile: x\n", "unknown key 'keyfile' in tls", NULL, NULL, 8},
        {NULL, one_key, "", "tls needs cert", NULL, NULL, 0},
        {one_pem, NULL, "", "tls needs key", NULL, NULL, 0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char tls[1024], want[1024] = "", text[2048], path[160];
        snprintf(tls, sizeof tls, "%s%s%s%s%s%s%s", rows[i].cert ? "    cert: " : "",
                 rows[i].cert ? rows[i].cert : "", rows[i].cert ? "\n" : "",
                 rows[i].key ? "    key: " : "", rows[i].key ? rows[i].key : "",
                 rows[i].key ? "\n" : "", rows[i].extra);
        if (rows[i].want != NULL)
            snprintf(want, sizeof want, rows[i].want, rows[i].want_arg ? rows[i].want_arg : "",
                     rows[i].want_arg2 ? rows[i].want_arg2 : "");
        snprintf(text, sizeof text,
                 "server:\n  listen: 127.0.0.1:1\n  open_mode: true\n  log_level: error\n"
                 "  tls:\n%s"
                 "models:\n  - {name: m, tier: local, target: engine}\n", tls);
        path_in(path, sizeof path, "check.yaml");
        assert_true(write_file(path, text));
        struct tg_config *cfg = NULL;
        char err[1024] = "";
        int rc = tg_config_load(path, &cfg, err, sizeof err);
        if (rows[i].want == NULL) {
            if (rc != TG_OK)
                print_error("row %zu: unexpected error %s\n", i, err);
            assert_int_equal(rc, TG_OK);
            assert_true(cfg->server.tls.enabled);
            assert_string_equal(cfg->server.tls.cert, one_pem);
            assert_int_equal(cfg->server.tls.min_version, 12);
            tg_config_unref(cfg);
            continue;
        }
        if (rc == TG_OK || strstr(err, want) == NULL)
            print_error("row %zu: want '%s'\n  got '%s' (rc %d)\n", i, want, err, rc);
        assert_int_not_equal(rc, TG_OK);
        assert_non_null(strstr(err, want));
        if (rows[i].line > 0) {
            char prefix[200];
            snprintf(prefix, sizeof prefix, "%s:%d: ", path, rows[i].line);
            assert_true(strncmp(err, prefix, strlen(prefix)) == 0);
        }
    }
}

static void test_healthz_keepalive(void **state)
{
    CURL *h = curl_easy_init();
    struct resp r;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(https(h, "GET", "/healthz", NULL, &r), CURLE_OK);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "\"ok\""));
        /* the first request opens the connection, the next ones reuse it */
        assert_int_equal(r.connects, i == 0 ? 1 : 0);
        free(r.body);
    }
    curl_easy_cleanup(h);
    assert_int_equal(served_serial(), 0x1001);
}

static void test_chat_remote_and_local(void **state)
{
    CURL *h = curl_easy_init();
    struct resp r;
    assert_int_equal(https(h, "POST", "/v1/chat/completions",
                           "{\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                           &r), CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "Hello from the fake upstream."));
    free(r.body);
    assert_int_equal(https(h, "POST", "/v1/chat/completions",
                           "{\"model\":\"phi-3.5-mini\",\"max_tokens\":4,"
                           "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                           &r), CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"chat.completion\""));
    assert_int_equal(r.connects, 0); /* same kept-alive TLS connection */
    free(r.body);
    /* an error from the pipeline travels over TLS like any answer */
    assert_int_equal(https(h, "POST", "/v1/chat/completions",
                           "{\"model\":\"gpt-dead\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                           &r), CURLE_OK);
    assert_true(r.status >= 500);
    assert_non_null(strstr(r.body, "\"error\""));
    free(r.body);
    curl_easy_cleanup(h);
}

static void test_streams(void **state)
{
    const char *bodies[] = {
        "{\"model\":\"gpt-fake\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        "{\"model\":\"phi-3.5-mini\",\"stream\":true,\"max_tokens\":6,"
        "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
    };
    for (size_t i = 0; i < 2; i++) {
        struct resp r;
        assert_int_equal(https_once("POST", "/v1/chat/completions", bodies[i], &r), 200);
        int events = 0;
        for (const char *p = strstr(r.body, "data: {"); p != NULL; p = strstr(p + 1, "data: {"))
            events++;
        if (events < 2 || strstr(r.body, "data: [DONE]") == NULL)
            print_error("stream %zu:\n%s\n", i, r.body);
        assert_true(events >= 2);
        assert_non_null(strstr(r.body, "data: [DONE]"));
        free(r.body);
    }
}

/* Many short streams, each on a new TLS connection: every one must end with [DONE]. Before
 * http.c ended SSE replies from evhttp's "written" callback, about 1 in 10 lost its end over TLS
 * (a deferred callback of an earlier chunk made evhttp stop writing). */
static void test_stream_ends_repeatedly(void **state)
{
    const char *body =
        "{\"model\":\"gpt-fake\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    int incomplete = 0;
    timeout_ms = 10000; /* a stuck end would otherwise wait for the idle timeout (75 s) */
    for (int i = 0; i < 60; i++) {
        CURL *h = curl_easy_init();
        struct resp r;
        CURLcode rc = https(h, "POST", "/v1/chat/completions", body, &r);
        curl_easy_cleanup(h);
        if (rc != CURLE_OK || r.status != 200 || strstr(r.body, "data: [DONE]") == NULL)
            incomplete++;
        free(r.body);
    }
    timeout_ms = 120000;
    assert_int_equal(incomplete, 0);
}

static void test_body_limit(void **state)
{
    size_t n = MAX_BODY + 4096;
    char *body = malloc(n + 128);
    assert_non_null(body);
    int k = snprintf(body, n + 128, "{\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\",\"content\":\"");
    memset(body + k, 'a', n);
    snprintf(body + k + n, 128, "\"}]}");
    struct resp r;
    assert_int_equal(https_once("POST", "/v1/chat/completions", body, &r), 413);
    assert_non_null(strstr(r.body, "\"error\""));
    free(r.body);
    free(body);
}

/* Plain HTTP to the TLS port: a plain 400 saying to use https (OpenAI-shaped), the connection
 * closed, never a hang; the gateway goes on serving. */
static void test_plain_http_refused(void **state)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/models", E.port);
    struct tg_test_response r;
    const char *h[] = {"Authorization: Bearer secret", NULL};
    tg_test_http("GET", url, h, NULL, &r);
    assert_int_equal(r.status, 400);
    assert_non_null(r.body);
    assert_non_null(strstr(r.body, "\"code\":\"https_required\""));
    tg_test_response_free(&r);
    tg_test_http("POST", url, h, "{\"model\":\"gpt-fake\"}", &r);
    assert_int_equal(r.status, 400);
    tg_test_response_free(&r);
    assert_true(gw_alive());
    struct resp ok;
    assert_int_equal(https_once("GET", "/healthz", NULL, &ok), 200);
    free(ok.body);
}

/* Garbage where a ClientHello belongs, a truncated handshake record and a ClientHello-shaped
 * record with absurd lengths: each connection is closed, the gateway is unharmed. */
static void test_handshake_garbage(void **state)
{
    static const unsigned char junk[] = "\x00\x01\x02\x03garbage garbage garbage\r\n\r\n";
    static const unsigned char hello_bad[] = {0x16, 0x03, 0x01, 0x00, 0x30, 0x01, 0xff, 0xff, 0xff,
                                              0x03, 0x03, 0xde, 0xad, 0xbe, 0xef};
    struct {
        const void *data;
        size_t len;
    } cases[] = {
        {junk, sizeof junk - 1},
        {hello_bad, sizeof hello_bad},
        {"\x16\x03\x01\x40\x00", 5}, /* a 16 KiB record that never comes: the header deadline */
    };
    srand(1234);
    unsigned char noise[2048];
    for (size_t i = 0; i < sizeof noise; i++)
        noise[i] = (unsigned char)rand();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0] + 1; i++) {
        int fd = tcp_connect(E.port);
        assert_true(fd != -1);
        const void *d = i < 3 ? cases[i].data : noise;
        size_t len = i < 3 ? cases[i].len : sizeof noise;
        assert_true(send(fd, d, len, MSG_NOSIGNAL) == (ssize_t)len);
        /* The server answers with an alert or nothing, then closes: read until EOF or reset. */
        char buf[512];
        ssize_t n;
        int reads = 0;
        while ((n = recv(fd, buf, sizeof buf, 0)) > 0 && reads++ < 100) {
        }
        bool closed = n == 0 || (n == -1 && errno == ECONNRESET);
        if (!closed)
            print_error("case %zu: connection not closed (n %zd, %s)\n", i, n, strerror(errno));
        assert_true(closed);
        close(fd);
    }
    assert_true(gw_alive());
    struct resp ok;
    assert_int_equal(https_once("GET", "/healthz", NULL, &ok), 200);
    free(ok.body);
}

/* The connection still open? Reads what is there without blocking (the socket is non-blocking):
 * false once the server has closed it. */
static bool tls_still_open(struct tls_conn *c)
{
    char buf[1024];
    for (;;) {
        int n = SSL_read(c->ssl, buf, sizeof buf);
        if (n > 0)
            continue;
        int e = SSL_get_error(c->ssl, n);
        ERR_clear_error();
        return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
    }
}

/* Slowloris over TLS: after the handshake, a request whose headers trickle in a byte every
 * 200 ms is dropped by the header deadline (header_timeout_ms 1000), as over plain HTTP. */
static void test_slowloris_over_tls(void **state)
{
    int before = count_in_log("did not arrive within");
    struct tls_conn c;
    assert_true(tls_open(&c));
    assert_true(fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK) == 0);
    const char *start = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    assert_true(SSL_write(c.ssl, start, (int)strlen(start)) > 0);
    bool closed = false;
    for (int i = 0; i < 50 && !closed; i++) { /* 10 s at most */
        usleep(200000);
        int n = SSL_write(c.ssl, "x", 1);
        int e = n > 0 ? SSL_ERROR_NONE : SSL_get_error(c.ssl, n);
        closed = (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) ||
                 !tls_still_open(&c);
    }
    tls_close(&c);
    assert_true(closed);
    assert_true(log_wait("did not arrive within", 2000));
    assert_true(count_in_log("did not arrive within") > before);
    assert_true(gw_alive());
}

/* A client that hangs up over TLS (close_notify, then FIN) while its request waits on a slow
 * upstream: the gateway notices within the bound and cancels, as over plain HTTP. */
static void test_client_hangup_cancels(void **state)
{
    /* TLS 1.3 encrypts the alert (it looks like a short application-data record), 1.2 does not */
    const int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
    for (int v = 0; v < 2; v++) {
        int before = count_in_log("client closed the connection");
        struct tls_conn c;
        assert_true(tls_open_max(&c, versions[v]));
        const char *body = "{\"model\":\"gpt-slow\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
        char req[512];
        int n = snprintf(req, sizeof req,
                         "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                         "Authorization: Bearer secret\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\n\r\n%s",
                         strlen(body), body);
        assert_true(SSL_write(c.ssl, req, n) == n);
        usleep(500000); /* the request is in flight (the upstream answers after 4 s) */
        SSL_shutdown(c.ssl); /* close_notify */
        tls_close(&c);
        bool seen = false;
        for (int i = 0; i < 60 && !seen; i++) { /* 3 s, under the upstream's 4 s */
            seen = count_in_log("client closed the connection") > before;
            if (!seen)
                usleep(50000);
        }
        if (!seen)
            print_error("TLS version 0x%x: the hang-up was not noticed\n", (unsigned)versions[v]);
        assert_true(seen);
    }
    assert_true(gw_alive());
}

/* SIGHUP with a new certificate at the same path: new connections see it, a connection opened
 * before keeps working; then a broken certificate: the reload is refused, the last good one
 * stays. */
static void test_sighup_reload(void **state)
{
    CURL *kept = curl_easy_init();
    struct resp r;
    assert_int_equal(https(kept, "GET", "/healthz", NULL, &r), CURLE_OK);
    assert_int_equal(r.status, 200);
    free(r.body);
    assert_int_equal(served_serial(), 0x1001);

    char two_pem[160], two_key[160];
    path_in(two_pem, sizeof two_pem, "two.pem");
    path_in(two_key, sizeof two_key, "two.key");
    assert_true(copy_file(two_pem, E.cert) && copy_file(two_key, E.key));
    int reloads = count_in_log("TLS certificate reloaded");
    assert_int_equal(kill(E.gw_pid, SIGHUP), 0);
    for (int i = 0; i < 200 && count_in_log("TLS certificate reloaded") == reloads; i++)
        usleep(50000);
    assert_true(count_in_log("TLS certificate reloaded") > reloads);
    assert_true(log_wait("serial 2002", 1000));
    assert_int_equal(served_serial(), 0x2002);
    /* the connection from before the reload is still served (on its first certificate) */
    assert_int_equal(https(kept, "GET", "/healthz", NULL, &r), CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.connects, 0);
    free(r.body);
    curl_easy_cleanup(kept);

    /* broken: garbage in the certificate file */
    assert_true(write_file(E.cert, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"));
    int kept_msgs = count_in_log("keeping the current configuration");
    assert_int_equal(kill(E.gw_pid, SIGHUP), 0);
    for (int i = 0; i < 200 && count_in_log("keeping the current configuration") == kept_msgs; i++)
        usleep(50000);
    assert_true(count_in_log("keeping the current configuration") > kept_msgs);
    assert_true(log_wait("server.tls.cert", 1000));
    assert_int_equal(served_serial(), 0x2002);

    /* broken: the certificate of another key */
    char other_pem[160];
    path_in(other_pem, sizeof other_pem, "other.pem");
    assert_true(copy_file(other_pem, E.cert));
    kept_msgs = count_in_log("keeping the current configuration");
    assert_int_equal(kill(E.gw_pid, SIGHUP), 0);
    for (int i = 0; i < 200 && count_in_log("keeping the current configuration") == kept_msgs; i++)
        usleep(50000);
    assert_true(count_in_log("keeping the current configuration") > kept_msgs);
    assert_true(log_wait("does not match the certificate", 1000));
    assert_int_equal(served_serial(), 0x2002);
    assert_true(gw_alive());

    /* repaired: the pair is picked up again */
    assert_true(copy_file(two_pem, E.cert));
    reloads = count_in_log("TLS certificate reloaded");
    assert_int_equal(kill(E.gw_pid, SIGHUP), 0);
    for (int i = 0; i < 200 && count_in_log("TLS certificate reloaded") == reloads; i++)
        usleep(50000);
    assert_true(count_in_log("TLS certificate reloaded") > reloads);
    struct resp ok;
    assert_int_equal(https_once("GET", "/healthz", NULL, &ok), 200);
    free(ok.body);
}

/* Settings follow a reload too: min_version "1.3" refuses a TLS 1.2 client on new connections;
 * turning TLS off by a reload is refused (the port keeps speaking HTTPS). */
static void test_sighup_settings(void **state)
{
    struct tls_conn c;
    assert_true(tls_open_max(&c, TLS1_2_VERSION));
    tls_close(&c);

    min_version = "1.3";
    assert_true(write_config(E.cert, E.key));
    assert_true(sighup_and_wait("TLS certificate reloaded"));
    assert_false(tls_open_max(&c, TLS1_2_VERSION));
    tls_close(&c);
    assert_true(tls_open_max(&c, TLS1_3_VERSION));
    assert_int_equal(strcmp(SSL_get_version(c.ssl), "TLSv1.3"), 0);
    tls_close(&c);

    with_tls = false;
    assert_true(write_config(E.cert, E.key));
    assert_true(sighup_and_wait("cannot be turned off by a reload"));
    assert_int_equal(served_serial(), 0x2002);

    with_tls = true;
    min_version = "1.2";
    assert_true(write_config(E.cert, E.key));
    assert_true(sighup_and_wait("TLS certificate reloaded"));
    assert_true(tls_open_max(&c, TLS1_2_VERSION));
    tls_close(&c);
    assert_true(gw_alive());
}

/* The official openai npm client (tests/conformance) over HTTPS, trusting the test CA through
 * NODE_EXTRA_CA_CERTS. Skipped when the client is not installed (test_conformance installs it). */
static void test_openai_client(void **state)
{
    if (access(CONF_DIR "/node_modules/openai/package.json", R_OK) != 0) {
        printf("SKIP: %s/node_modules has no openai client (run test_conformance once)\n", CONF_DIR);
        skip();
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "cd " CONF_DIR " && NODE_EXTRA_CA_CERTS=%s TIERGATE_BASE_URL=https://localhost:%d/v1 "
             "TIERGATE_API_KEY=secret timeout 240 node conformance.mjs 2>&1",
             E.ca, E.port);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[1024];
    while (fgets(line, sizeof line, p) != NULL)
        printf("  %s", line);
    int st = pclose(p);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

struct stream_job {
    struct resp r;
    long status;
};

static void *stream_thread(void *arg)
{
    struct stream_job *j = arg;
    j->status = https_once("POST", "/v1/chat/completions",
                           "{\"model\":\"gpt-trickle\",\"stream\":true,"
                           "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                           &j->r);
    return NULL;
}

/* Last: SIGTERM while a TLS stream is running. The stream finishes completely ([DONE]), the
 * process exits 0 after the drain. */
static void test_sigterm_drains_tls_stream(void **state)
{
    struct stream_job j = {0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, stream_thread, &j), 0);
    /* wait until the gateway has the stream in flight (the fake upstream saw the request) */
    bool started = false;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/_requests", E.fake_port);
    for (int i = 0; i < 200 && !started; i++) {
        struct tg_test_response fr;
        if (tg_test_http("GET", url, NULL, NULL, &fr) == 0 && fr.body != NULL)
            started = strstr(fr.body, "chunk_delay_ms=300") != NULL;
        tg_test_response_free(&fr);
        if (!started)
            usleep(50000);
    }
    assert_true(started);
    assert_int_equal(kill(E.gw_pid, SIGTERM), 0);
    pthread_join(t, NULL);
    if (j.status != 200 || strstr(j.r.body, "data: [DONE]") == NULL)
        print_error("stream during drain: status %ld\n%s\n", j.status, j.r.body);
    assert_int_equal(j.status, 200);
    assert_non_null(strstr(j.r.body, "data: [DONE]"));
    free(j.r.body);
    /* the drain ends by itself once the stream is done: wait for the exit, do not signal again */
    int st = -1;
    for (int i = 0; i < 600 && waitpid(E.gw_pid, &st, WNOHANG) == 0; i++)
        usleep(50000);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        print_error("tiergate did not exit 0 after the drain (status %d)\n", st);
    else
        E.gw_pid = 0;
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(log_wait("tiergate stopped", 1000));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_healthz_keepalive),
        cmocka_unit_test(test_chat_remote_and_local),
        cmocka_unit_test(test_streams),
        cmocka_unit_test(test_stream_ends_repeatedly),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_plain_http_refused),
        cmocka_unit_test(test_handshake_garbage),
        cmocka_unit_test(test_slowloris_over_tls),
        cmocka_unit_test(test_client_hangup_cancels),
        cmocka_unit_test(test_sighup_reload),
        cmocka_unit_test(test_sighup_settings),
        cmocka_unit_test(test_openai_client),
        cmocka_unit_test(test_sigterm_drains_tls_stream),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
