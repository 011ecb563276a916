/* tiergate engine over nng: serve a tg_engine to other threads or processes, and use one or
 * more served engines ("engine workers") from the gateway with the same job and event
 * structs as tg/engine.h.
 *
 *   gateway ──tg_engine_client──(nng REQ/REP)──▶ tg_engine_server ──▶ tg_engine (llama.cpp)
 *
 * Transports: inproc://name (the default inside the single tiergate binary, see
 * tg_engine_local_start), ipc:///path/to/socket, tcp://host:port. Same code path for all.
 *
 * Wire protocol (version 1)
 * -------------------------
 * Pattern: REQ/REP with contexts. The worker listens on a REP socket and serves every
 * request on its own nng context, so many clients and many jobs share one socket. Each
 * client dials every worker with one REQ socket and keeps two request streams on it:
 *
 *   ops stream  {"v":1,"sid":S,"op":"ops","ops":[OP,...]}      → {"v":1,"res":[RES,...],"st":STATS}
 *               OP  = {"op":"submit","id":J,"job":JOB} | {"op":"cancel","id":J}
 *               RES = {"id":J,"e":0} | {"id":J,"e":ERR,"m":"message"}
 *               Submits and cancels queued while a batch is in flight go in the next one,
 *               in order, so a cancel never overtakes its submit.
 *   poll stream {"v":1,"sid":S,"op":"poll","hold":MS[,"info":true]}
 *                                              → {"v":1,"st":STATS[,"info":INFO],"ev":[EV,...]}
 *               A long poll: the worker answers as soon as it has events for session S,
 *               or after MS milliseconds with none. The answer doubles as the heartbeat and
 *               carries the worker's tg_engine_stats, so tg_engine_client_stats() never
 *               touches the network. "info" asks for the model facts (once per connection).
 *   error       {"v":1,"e":ERR,"m":"message"}  (bad version, malformed request)
 *
 *   S   session id: 16 hex digits chosen by the client, new for every connection. The
 *       worker remembers the nng pipe a session last spoke on; when that pipe goes away, or
 *       no request arrives for session_timeout_ms, the session's jobs are cancelled, so a
 *       dead gateway never holds slots.
 *   J   the client's job id (what tg_engine_client_submit returns), unique per client.
 *   JOB {"k":kind,"msgs":[[role,content],...],"p":prompt,"temp":t,"top_p":p,"top_k":k,
 *        "seed":s,"max":n,"stop":[...],"labels":[...],"multi":b,"instr":s,"schema":s,
 *        "gbnf":s,"stream":b}  (absent = zero/NULL, as in struct tg_engine_job)
 *   EV  {"id":J,"t":0,"x":text}                                   token
 *       {"id":J,"t":1,"x":text,"fr":reason,"u":[prompt,completion,cached],"ttft":ms,
 *        "tot":ms[,"li":[i,...],"cf":conf][,"emb":[f,...]]}       done
 *       {"id":J,"t":2,"e":ERR,"m":message}                        error
 *   STATS {"ns","sb","qd","qm","ew","tps","ptps","jd","tg","ph","pm","pt","pe"}: the
 *       fields of struct tg_engine_stats in order.
 *   INFO  {"name","desc","np","mb","ctx","ctxt","ns","ne","nv","rw","emb"}: struct
 *       tg_engine_info.
 *   ERR is an enum tg_err value (tg/err.h: stable numbers).
 *
 * Messages are JSON (jansson), at most max_msg_bytes (default 8 MiB) each way; an nng
 * socket drops anything larger (NNG_OPT_RECVMAXSZ). A poll answer carries at most that
 * many bytes of events; the rest wait for the next poll. A version other than 1 is
 * answered with an error naming both versions.
 *
 * Liveness: a worker is live once a poll answer has come back on its current connection.
 * It stops being live when its pipe is removed (process died, connection reset) or when
 * no poll answer arrives within heartbeat_timeout_ms (hung process, dead network); its
 * in-flight jobs then get TG_EV_ERROR with TG_UNAVAILABLE and a message naming the worker
 * URL. The nng dialer keeps reconnecting; a worker that answers again is live again.
 */
#ifndef TG_ENGINE_NET_H
#define TG_ENGINE_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tg/engine.h"

#define TG_ENGINE_NET_PROTO_VERSION 1

/* ---------------------------------------------------------------------------------------
 * Server: serve an engine on an nng address.
 * ------------------------------------------------------------------------------------- */

struct tg_engine_server;

struct tg_engine_server_params {
    uint32_t session_timeout_ms; /* cancel a session's jobs after this long without a request
                                    from it (ms); 0 = 15000 */
    size_t max_msg_bytes;        /* largest request accepted / answer sent, bytes;
                                    0 = 8 MiB */
    uint32_t max_contexts;       /* nng contexts serving requests at once (each client holds
                                    up to 2); 0 = 1024 */
};

struct tg_engine_server_params tg_engine_server_default_params(void);

/* Listen on url and serve eng. p may be NULL for defaults. The engine must outlive the
 * server (stop the server first). Requests are handled on nng's callback threads; the
 * engine's event callback only queues the encoded event and wakes the session's parked poll
 * (nng_aio_cancel), so the engine thread never waits on the network.
 * Returns TG_OK and sets *out, or TG_INVAL (bad URL or params), TG_IO (address in use,
 * cannot listen: message names the URL and nng's reason), TG_NOMEM; message in err. */
int tg_engine_server_start(struct tg_engine *eng, const char *url,
                           const struct tg_engine_server_params *p,
                           struct tg_engine_server **out, char *err, size_t errlen);

/* Stop listening, cancel every job this server submitted and wait until the engine has
 * delivered their final events, then free. NULL is a no-op. Not from an engine callback. */
void tg_engine_server_stop(struct tg_engine_server *srv);

/* ---------------------------------------------------------------------------------------
 * Client: what the gateway uses, for in-process and remote engines alike.
 * ------------------------------------------------------------------------------------- */

struct tg_engine_client;

struct tg_engine_client_params {
    uint32_t heartbeat_timeout_ms; /* a worker whose poll answer is this late is dead (ms);
                                      0 = 5000. Must exceed poll_hold_ms. */
    uint32_t poll_hold_ms;         /* how long a worker holds an empty poll (ms); 0 = 250 */
    size_t max_msg_bytes;          /* as on the server; 0 = 8 MiB */
    uint32_t reconnect_ms;         /* first redial delay after a lost connection (ms), doubling
                                      up to 2 s; 0 = 100 */
};

struct tg_engine_client_params tg_engine_client_default_params(void);

/* Dial every URL (n >= 1, at most 64). Dialing is asynchronous: workers that are not up yet
 * are retried, and become live when they first answer. p may be NULL.
 * Returns TG_OK and sets *out, or TG_INVAL (n == 0, n > 64, a bad URL: message names it),
 * TG_NOMEM; message in err. */
int tg_engine_client_create(const char *const *urls, size_t n,
                            const struct tg_engine_client_params *p,
                            struct tg_engine_client **out, char *err, size_t errlen);

/* Wait up to timeout_ms for at least n_live workers to be live. TG_OK or TG_TIMEOUT.
 * For start-up and tests; blocks the caller. */
int tg_engine_client_wait_ready(struct tg_engine_client *c, size_t n_live, uint32_t timeout_ms);

/* Send a job to a live worker: the one with the least load relative to its slots
 * (max(own in-flight jobs, its slots_busy + queue_depth) / n_slots), ties taken in turn.
 * Never blocks on the network: the job is encoded, queued, and sent by nng.
 *
 * Returns TG_OK and sets *job_id (if not NULL); the callback then runs exactly as for
 * tg_engine_submit (tokens if job->stream, then exactly one DONE or ERROR), except:
 *   - it runs on an nng callback thread (one at a time per client, never concurrently, so
 *     per-job order is kept); the gateway hands each event to the owning event loop;
 *   - errors the engine reports at submit (TG_INVAL, TG_CONTEXT, TG_SCHEMA, TG_BUSY,
 *     TG_UNSUPPORTED) arrive as an ERROR event, since they are known only on the worker;
 *   - a worker that dies or goes silent gives TG_UNAVAILABLE, naming the worker, to the
 *     jobs it may have started; jobs whose submit had not left this process yet are sent
 *     to another live worker instead (or fail the same way when there is none);
 *   - tg_engine_client_destroy gives TG_CLOSED for jobs still running (on its thread).
 * Synchronous errors (callback never runs): TG_UNAVAILABLE (no live worker), TG_INVAL
 * (job cannot be encoded: non-UTF-8 text, non-finite number, too many items), TG_TOOBIG
 * (encoded job over max_msg_bytes), TG_CLOSED (client being destroyed), TG_NOMEM; message
 * in err. The job's memory may be freed as soon as this returns. Thread-safe, and may be
 * called from an event callback. */
int tg_engine_client_submit(struct tg_engine_client *c, const struct tg_engine_job *job,
                            tg_engine_event_cb cb, void *user, uint64_t *job_id, char *err,
                            size_t errlen);

/* Ask the job's worker to cancel it; the slot is freed there and the job ends with DONE
 * "cancelled" (or its final event if it had already finished). TG_OK, or TG_NOTFOUND when
 * the job is unknown or already got its final event. Thread-safe, never blocks on the
 * network. */
int tg_engine_client_cancel(struct tg_engine_client *c, uint64_t job_id);

/* Which worker (index into the create() URL list) runs a job: TG_OK or TG_NOTFOUND. */
int tg_engine_client_job_worker(struct tg_engine_client *c, uint64_t job_id, size_t *index);

struct tg_engine_client_stats {
    int32_t n_workers;       /* configured */
    int32_t workers_live;    /* answering now */
    int32_t jobs_in_flight;  /* submitted through this client, not finished */
    /* Over live workers, from their last heartbeat (at most poll_hold_ms old):
     * counts and rates are summed; est_wait_ms is the smallest (where a new job would go);
     * jobs_done / tokens / prefix cache counters are summed. All zero with no live worker. */
    struct tg_engine_stats engine;
};

/* Aggregate snapshot; never touches the network. Thread-safe. */
void tg_engine_client_stats(struct tg_engine_client *c, struct tg_engine_client_stats *out);

struct tg_engine_worker_stats {
    const char *url;        /* valid while the client lives */
    bool live;
    int32_t jobs_in_flight; /* this client's jobs on that worker */
    struct tg_engine_stats engine; /* last heartbeat's (zeros before the first) */
    uint64_t heartbeats;    /* poll answers received */
};

/* One worker's snapshot: TG_OK, or TG_NOTFOUND for index >= n_workers. Thread-safe. */
int tg_engine_client_worker_stats(struct tg_engine_client *c, size_t index,
                                  struct tg_engine_worker_stats *out);

/* The model a worker serves (its tg_engine_info, sent once per connection): TG_OK, or
 * TG_NOTFOUND for a bad index or before the worker has answered on its current connection.
 * Thread-safe, no network. */
int tg_engine_client_worker_info(struct tg_engine_client *c, size_t index,
                                 struct tg_engine_info *out);

/* Close the sockets, fail in-flight jobs with TG_CLOSED (callbacks run on this thread), free.
 * NULL is a no-op. Never from an event callback. */
void tg_engine_client_destroy(struct tg_engine_client *c);

/* ---------------------------------------------------------------------------------------
 * Local: the single binary's default — engine + inproc server + client in one process.
 * ------------------------------------------------------------------------------------- */

struct tg_engine_local;

/* Create the engine from ep, serve it on a fresh inproc:// address, connect a client and
 * wait (up to 10 s) until it is live. Errors as tg_engine_create (model load) or
 * tg_engine_server_start / tg_engine_client_create; message in err. */
int tg_engine_local_start(const struct tg_engine_params *ep, struct tg_engine_local **out,
                          char *err, size_t errlen);

/* The parts; owned by the local handle (do not destroy them). */
struct tg_engine_client *tg_engine_local_client(struct tg_engine_local *l);
struct tg_engine *tg_engine_local_engine(struct tg_engine_local *l);
const char *tg_engine_local_url(const struct tg_engine_local *l);

/* Client, then server, then engine. NULL is a no-op. Never from an event callback. */
void tg_engine_local_stop(struct tg_engine_local *l);

#endif
