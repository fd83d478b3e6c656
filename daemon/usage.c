/*
 * usage.c - CPU and RAM use from /proc (usage.h). Two small files read per
 * heartbeat; a file that cannot be read gives no sample, never an error.
 */
#include "usage.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

#define DEADBAND_CPU 5.0    /* percentage points */
#define DEADBAND_RAM 0.05   /* relative */
#define FORCE_INTERVAL 60.0 /* seconds */

/* The aggregate "cpu" line: busy and total jiffies. */
static int read_cpu(const char *proc, unsigned long long *busy, unsigned long long *total)
{
    char path[256];
    unsigned long long v[8] = {0};
    snprintf(path, sizeof(path), "%s/stat", proc);
    FILE *fp = fopen(path, "re");
    if (fp == NULL)
        return -1;
    int n = fscanf(fp, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(fp);
    if (n < 4)
        return -1;
    *total = 0;
    for (int i = 0; i < 8; i++)
        *total += v[i];
    *busy = *total - v[3] - v[4]; /* idle and iowait are not busy */
    return 0;
}

/* MemTotal - MemAvailable, in GB. */
static double read_ram(const char *proc)
{
    char path[256], line[128];
    double total = -1, avail = -1, kb;
    snprintf(path, sizeof(path), "%s/meminfo", proc);
    FILE *fp = fopen(path, "re");
    if (fp == NULL)
        return -1;
    while (fgets(line, sizeof(line), fp) != NULL) {
        if (sscanf(line, "MemTotal: %lf kB", &kb) == 1)
            total = kb;
        else if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1)
            avail = kb;
    }
    fclose(fp);
    if (total < 0 || avail < 0)
        return -1;
    return (total - avail) / (1024.0 * 1024.0);
}

static int worth_sending(const struct usage *u, double cpu, double ram, double now)
{
    if (u->sent_at <= 0 || now - u->sent_at >= FORCE_INTERVAL)
        return 1;
    if (fabs(cpu - u->sent_cpu) > DEADBAND_CPU)
        return 1;
    if (u->sent_ram <= 0)
        return ram > 0;
    return fabs(ram - u->sent_ram) / u->sent_ram > DEADBAND_RAM;
}

json_t *usage_sample(struct usage *u, const char *proc)
{
    unsigned long long busy, total;
    double ram = read_ram(proc);
    if (read_cpu(proc, &busy, &total) < 0 || ram < 0)
        return NULL;
    double cpu = 0;
    if (u->total > 0 && total > u->total)
        cpu = 100.0 * (double)(busy - u->busy) / (double)(total - u->total);
    u->busy = busy;
    u->total = total;
    /* One decimal: the numbers are signed, and short texts are the same in
     * every printer (PROTOCOL-1.0b14.md 9). */
    cpu = round_away(cpu * 10.0) / 10.0;
    ram = round_away(ram * 100.0) / 100.0;
    double now = now_mono();
    if (!worth_sending(u, cpu, ram, now))
        return NULL;
    u->sent_cpu = cpu;
    u->sent_ram = ram;
    u->sent_at = now;
    return json_pack("{s:f, s:f}", "cpu_load_percent", cpu, "ram_used_gb", ram);
}
