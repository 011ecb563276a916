/* Leveled logging, text or JSON lines, to stderr.
 *
 * Thread-safe: one write(2) per line, so lines from different threads never interleave.
 * A request id (thread-local, set by the gateway for the request being handled) is added to
 * every line logged while it is set. Secrets must never be passed here; as a second line of
 * defence every line is redacted before it is written (see tg_log_redact).
 *
 *   text:  2026-11-21T05:05:36.123Z INFO  [req-id] message
 *   json:  {"ts":"2026-11-21T05:05:36.123Z","level":"info","request_id":"…","msg":"…"}
 */
#ifndef TG_LOG_H
#define TG_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum tg_log_level { TG_LOG_DEBUG, TG_LOG_INFO, TG_LOG_WARN, TG_LOG_ERROR, TG_LOG_OFF };

/* Process-wide settings; call before starting threads. Defaults: INFO, text. */
void tg_log_set_level(enum tg_log_level level);
void tg_log_set_json(bool json);
enum tg_log_level tg_log_get_level(void);

/* Parse "debug|info|warn|error|off"; returns false (and leaves *out) on anything else. */
bool tg_log_level_parse(const char *s, enum tg_log_level *out);

/* Request id for the calling thread's following log lines; NULL clears it. The string is
 * copied (at most 63 bytes kept). */
void tg_log_set_request_id(const char *id);

void tg_log(enum tg_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tg_logv(enum tg_log_level level, const char *fmt, va_list ap);

/* Redaction. Registered secrets (provider keys, the Redis password, the webhook secret: the
 * config loader registers them) are replaced by "****" wherever they occur in a log line; so is
 * the credential after "Bearer " and after "x-api-key:" / "api-key:" / "password=" (any case),
 * which covers client API keys and a provider that echoes our headers back; and so is any
 * word shaped like a provider key ("sk-", "gsk_", "xai-", "AIza" followed by at least 16 key
 * characters [A-Za-z0-9_-]), so a key a client sends in the wrong field (as a model name, in a
 * body) is not written either.
 *
 * tg_log_add_secret copies s; secrets shorter than TG_LOG_SECRET_MIN bytes are ignored (they
 * would redact ordinary words). At most 64 are kept: beyond that the oldest is forgotten (the
 * loader registers the current config's secrets last). Returns false on NULL / too short / out
 * of memory. A line cut at its length limit has a secret that starts in its last bytes masked. Thread-safe (a reader-writer lock; logging takes the read side).
 * tg_log_clear_secrets forgets (and wipes) them all: at exit, and in tests. */
#define TG_LOG_SECRET_MIN 6
bool tg_log_add_secret(const char *s);
void tg_log_clear_secrets(void);
/* Redact s (NUL-terminated) in place; the result is never longer. Returns true if anything was
 * replaced. Usable on any text that leaves the process (error bodies relayed from providers). */
bool tg_log_redact(char *s);

#define tg_debug(...) tg_log(TG_LOG_DEBUG, __VA_ARGS__)
#define tg_info(...) tg_log(TG_LOG_INFO, __VA_ARGS__)
#define tg_warn(...) tg_log(TG_LOG_WARN, __VA_ARGS__)
#define tg_error(...) tg_log(TG_LOG_ERROR, __VA_ARGS__)

#endif
