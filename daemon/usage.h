/*
 * usage.h - how busy the machine is, from /proc, for RXON 1.0b14's
 * heartbeat `usage` (the orchestrator only stores it; operators read it in
 * its worker list): CPU load in percent since the previous sample, and RAM
 * in use. With the SDK's deadband (PROTOCOL-1.0b14.md 6.4): a sample is
 * worth sending when none was sent yet, a minute passed, the CPU load moved
 * by more than 5 points or the RAM by more than 5 %.
 */
#ifndef AVT_DAEMON_USAGE_H
#define AVT_DAEMON_USAGE_H

#include <jansson.h>

struct usage {
    unsigned long long busy, total; /* /proc/stat jiffies at the previous sample */
    double sent_cpu, sent_ram;      /* what was sent last */
    double sent_at;                 /* now_mono() of that; 0 = never */
};

/* A sample as {"cpu_load_percent", "ram_used_gb"} when it is worth sending
 * (new reference, and remembered as sent), else NULL. proc: the /proc
 * directory ("/proc"; tests pass their own). */
json_t *usage_sample(struct usage *u, const char *proc);

#endif /* AVT_DAEMON_USAGE_H */
