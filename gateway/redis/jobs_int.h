/* Module-private: the process-wide webhook sender used by jobs.c. */
#ifndef TG_GW_JOBS_INT_H
#define TG_GW_JOBS_INT_H

/* Reference-counted start/stop of the sender thread (one per process). */
int tg_webhook_start(void);
void tg_webhook_stop(void);

/* Queue one delivery: POST body to url, signed with secret (NULL = unsigned), retried with
 * exponential backoff up to `retries` more times. Copies everything; thread-safe. */
void tg_webhook_enqueue(const char *url, const char *body, const char *secret, int retries);

#endif
