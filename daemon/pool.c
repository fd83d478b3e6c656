/* pool.c - placeholder until the pool module lands; see pool.h. */
#include "pool.h"

#include <errno.h>
#include <stdlib.h>

struct pool *pool_create(const struct cfg *cfg, pool_notify_fn notify, void *arg)
{
    (void)cfg;
    (void)notify;
    (void)arg;
    return NULL;
}

void pool_destroy(struct pool *pool)
{
    (void)pool;
}

int pool_submit(struct pool *pool, struct task *t)
{
    (void)pool;
    (void)t;
    return -ENOSYS;
}

void pool_release(struct pool *pool)
{
    (void)pool;
}

int pool_free_slots(const struct pool *pool)
{
    (void)pool;
    return 0;
}

int pool_type_has_room(struct pool *pool, const char *type)
{
    (void)pool;
    (void)type;
    return 0;
}

struct pool_event *pool_take_events(struct pool *pool)
{
    (void)pool;
    return NULL;
}

void pool_event_free(struct pool_event *ev)
{
    free(ev);
}

void pool_post_progress(struct pool *pool, struct task *t, double percent, const char *message)
{
    (void)pool;
    (void)t;
    (void)percent;
    (void)message;
}

void pool_post_hotcache(struct pool *pool, int add, const char *name)
{
    (void)pool;
    (void)add;
    (void)name;
}

void pool_get_stats(struct pool *pool, struct pool_stats *st)
{
    (void)pool;
    (void)st;
}

size_t pool_get_type_stats(struct pool *pool, struct pool_type_stats *out, size_t n)
{
    (void)pool;
    (void)out;
    (void)n;
    return 0;
}

void pool_set_limits(struct pool *pool, const struct cfg *cfg)
{
    (void)pool;
    (void)cfg;
}
