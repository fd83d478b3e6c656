/* runonce.c - placeholder until run-once lands; see runonce.h. */
#include "runonce.h"

int runonce_main(const struct cfg *cfg, const char *plugin_dir, const char *type,
                 const char *params_arg)
{
    (void)cfg;
    (void)plugin_dir;
    (void)type;
    (void)params_arg;
    return 1;
}
