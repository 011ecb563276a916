/* `tiergate engine`: run a standalone engine worker serving one model over nng.
 *
 *   tiergate engine --listen ipc:///run/tiergate/engine.sock|tcp://0.0.0.0:7700
 *                   --model FILE [--slots N] [--ctx N] [--threads N] [--gpu-layers N]
 *                   [--kv-type f16|q8_0|q4_0] [--batch N] [--queue N]
 *                   [--log-level debug|info|warn|error] [--log-json]
 *
 * Gateways name the worker's address in their config (tg/engine_net.h describes the
 * protocol). SIGTERM or SIGINT stops it cleanly: stop listening, cancel running jobs, free
 * the model, exit 0.
 */
#ifndef TG_CLI_ENGINE_H
#define TG_CLI_ENGINE_H

/* argv[0] is "engine" (the subcommand). Returns the process exit status: 0 after a clean
 * shutdown, 1 when the model or the address cannot be used, 2 on a usage error. Blocks
 * SIGINT/SIGTERM/SIGHUP in the calling thread (threads it starts inherit that) and waits for
 * them with sigwait, so call it from the main thread before other threads exist. */
int tg_cli_engine(int argc, char **argv);

#endif
