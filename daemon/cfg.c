/* cfg.c - placeholder until the cfg module lands; see cfg.h. */
#include "cfg.h"

#include <errno.h>
#include <stdlib.h>

#include "util.h"

int cfg_load(const char *path, struct cfg **out, char *err, size_t errlen)
{
    (void)path;
    *out = NULL;
    fmt_err(err, errlen, "configuration loading not built yet");
    return -ENOSYS;
}

void cfg_destroy(struct cfg *cfg)
{
    free(cfg);
}

const struct cfg_limit *cfg_limit_find(const struct cfg *cfg, const char *type)
{
    (void)cfg;
    (void)type;
    return NULL;
}

void cfg_dump(const struct cfg *cfg, FILE *fp)
{
    (void)cfg;
    (void)fp;
}
