/* Admin key check for /metrics, /v1/usage and /dashboard. */
#include "metrics.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static bool key_matches(const struct tg_config *cfg, const char *key, size_t len)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(key, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return false;
    return CRYPTO_memcmp(md, cfg->server.admin_sha256, 32) == 0;
}

/* The `key` parameter of a query string, percent-decoded into buf; false if absent. */
static bool query_key(const char *query, char *buf, size_t buflen, size_t *outlen)
{
    for (const char *p = query; p != NULL && *p != '\0';) {
        const char *end = p + strcspn(p, "&");
        if (end - p > 4 && strncmp(p, "key=", 4) == 0) {
            size_t n = 0;
            for (const char *q = p + 4; q < end; q++) {
                int c = (unsigned char)*q;
                if (c == '%' && end - q > 2 && hexval(q[1]) >= 0 && hexval(q[2]) >= 0) {
                    c = hexval(q[1]) * 16 + hexval(q[2]);
                    q += 2;
                } else if (c == '+') {
                    c = ' ';
                }
                if (n + 1 >= buflen)
                    return false;
                buf[n++] = (char)c;
            }
            *outlen = n;
            return true;
        }
        p = *end != '\0' ? end + 1 : end;
    }
    return false;
}

bool tg_metrics_admin_allowed(const struct tg_config *cfg, const char *authorization,
                              const char *query)
{
    if (cfg == NULL || !cfg->server.has_admin_key)
        return true;
    if (authorization != NULL && strncasecmp(authorization, "Bearer ", 7) == 0) {
        const char *k = authorization + 7;
        while (*k == ' ')
            k++;
        size_t n = strlen(k);
        while (n > 0 && (k[n - 1] == ' ' || k[n - 1] == '\t'))
            n--;
        if (n > 0 && key_matches(cfg, k, n))
            return true;
    }
    char buf[512];
    size_t n = 0;
    return query_key(query, buf, sizeof buf, &n) && n > 0 && key_matches(cfg, buf, n);
}
