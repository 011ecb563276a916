/* `tiergate route`: show how requests would be routed, without running any model.
 *
 *   tiergate route --explain [--policy FILE] [--jsonl FILE|-] [--pretty]
 *                  [--local-target NAME] [--remote-target NAME] [--fallback NAME]...
 *                  [--privacy] [--budget-exhausted] [--circuit-open] [--engine-wait-ms N]
 *                  [--tier local|remote] [--pinned-model NAME] [--ctx TOKENS] [PROMPT...]
 *
 * The request is PROMPT (the arguments joined by spaces, as one user message), or stdin when
 * no PROMPT and no --jsonl is given, or each line of a JSONL file: an OpenAI chat body, a
 * completions/responses body, or a route-dev.jsonl row. With --explain every request prints
 * one JSON object per line ({id?, policy, features, score, threshold, rules_fired, decision},
 * see tg_router_explain); without it, one "tier<TAB>reason<TAB>score" line. The other flags
 * set what the gateway would know about the key and the tiers.
 * Default policy: $TIERGATE_POLICY, else policies/balanced.yaml (relative to the working
 * directory).
 */
#ifndef TG_CLI_ROUTE_H
#define TG_CLI_ROUTE_H

/* argv[0] is "route". Returns the exit status: 0 when every request was explained, 1 when a
 * JSONL line could not be read or routed (the others are still printed; the error goes to
 * stderr as "FILE:LINE: message"), 2 on a usage error or an invalid policy. Single-threaded;
 * writes to stdout/stderr only. */
int tg_cli_route(int argc, char **argv);

#endif
