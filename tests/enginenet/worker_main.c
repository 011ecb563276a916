/* Test engine worker: `tg-test-engine-worker --listen URL --model FILE ...`, the same code as
 * `tiergate engine` (argv[0] stands in for the subcommand). */
#include "cli_engine.h"

int main(int argc, char **argv)
{
    return tg_cli_engine(argc, argv);
}
