/* A stand-alone `route` command for tests: the same code `tiergate route` runs, without the
 * rest of the gateway (tiergate's main.c dispatches "route" to tg_cli_route too). */
#include "cli_route.h"

int main(int argc, char **argv)
{
    return tg_cli_route(argc, argv);
}
