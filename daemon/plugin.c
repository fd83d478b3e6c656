/* plugin.c - placeholder until the plugin module lands; see plugin.h. */
#include "plugin.h"

#include <errno.h>
#include <stdlib.h>

int plugin_set_load(const char *dir, const struct cfg *cfg, struct pool *pool,
                    struct plugin_set **out, char *err, size_t errlen)
{
    (void)dir;
    (void)cfg;
    (void)pool;
    *out = NULL;
    fmt_err(err, errlen, "plugin loading not built yet");
    return -ENOSYS;
}

struct plugin *plugin_set_find(const struct plugin_set *set, const char *type)
{
    (void)set;
    (void)type;
    return NULL;
}

void plugin_set_destroy(struct plugin_set *set)
{
    free(set);
}
