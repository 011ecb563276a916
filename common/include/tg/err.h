/* tiergate error codes: one X-macro table gives the enum and tg_strerror().
 *
 * Values are part of the ABI between the gateway and engine workers (they cross nng):
 * never renumber, only append. Foreign codes (CURLcode, nng, hiredis, llama_decode) are
 * mapped where they are called; the raw code goes to the log, not into this enum.
 */
#ifndef TG_ERR_H
#define TG_ERR_H

#define TG_ERR_MAP(X)                                                              \
    X(OK, 0, "success")                                                            \
    X(NOMEM, 1, "out of memory")                                                   \
    X(INVAL, 2, "invalid argument")                                                \
    X(IO, 3, "input/output error")                                                 \
    X(PARSE, 4, "parse error")                                                     \
    X(CONFIG, 5, "invalid configuration")                                          \
    X(NOTFOUND, 6, "not found")                                                    \
    X(TOOBIG, 7, "size limit exceeded")                                            \
    X(TIMEOUT, 8, "timed out")                                                     \
    X(CANCELED, 9, "canceled")                                                     \
    X(BUSY, 10, "queue full")                                                      \
    X(UNAVAILABLE, 11, "service unavailable")                                      \
    X(UPSTREAM, 12, "upstream error")                                              \
    X(MODEL, 13, "model error")                                                    \
    X(CONTEXT, 14, "prompt longer than the context")                               \
    X(SCHEMA, 15, "invalid or unsupported schema")                                 \
    X(AUTH, 16, "authentication failed")                                           \
    X(RATELIMIT, 17, "rate limit exceeded")                                        \
    X(BUDGET, 18, "budget exhausted")                                              \
    X(INTERNAL, 19, "internal error")                                              \
    X(CLOSED, 20, "closed")                                                        \
    X(UNSUPPORTED, 21, "not supported")

enum tg_err {
#define TG_ERR_ENUM(name, value, text) TG_##name = value,
    TG_ERR_MAP(TG_ERR_ENUM)
#undef TG_ERR_ENUM
};

/* Static text for an error code; never NULL ("unknown error" for values not in the table). */
const char *tg_strerror(int err);

/* The enum name without prefix ("NOMEM"), for logs and JSON error codes; never NULL. */
const char *tg_errname(int err);

#endif
