/*
 * test_usage.c - the heartbeat's machine usage (usage.h) read from a /proc
 * of the test's own making (a temporary directory with stat and meminfo):
 * the first sample is sent with 0 % CPU (no previous reading), the CPU
 * load is busy/total jiffies since the previous sample (idle and iowait
 * are not busy), RAM is MemTotal - MemAvailable in GB, and the SDK's
 * deadband holds a sample back unless the CPU moved by more than 5
 * points or the RAM by more than 5 %. Missing or unreadable files give no
 * sample and no crash.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tap.h"
#include "usage.h"

static char proc[64];

static void remove_proc(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", proc);
    if (system(cmd) != 0)
        fprintf(stderr, "# could not remove %s\n", proc);
}

/* The test's /proc, made on first use and removed at exit. */
static void make_proc(void)
{
    if (proc[0] != '\0')
        return;
    snprintf(proc, sizeof(proc), "/tmp/avt-usage-test.XXXXXX");
    if (mkdtemp(proc) == NULL)
        abort();
    atexit(remove_proc);
}

static void write_file(const char *name, const char *text)
{
    char path[128];
    make_proc();
    snprintf(path, sizeof(path), "%s/%s", proc, name);
    FILE *fp = fopen(path, "w");
    if (fp == NULL)
        abort();
    fputs(text, fp);
    fclose(fp);
}

/* user nice system idle iowait irq softirq steal */
static void set_cpu(unsigned long long busy, unsigned long long idle, unsigned long long iowait)
{
    char text[256];
    snprintf(text, sizeof(text),
             "cpu  %llu 0 0 %llu %llu 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n", busy, idle,
             iowait);
    write_file("stat", text);
}

static void set_ram(unsigned long total_kb, unsigned long avail_kb)
{
    char text[256];
    snprintf(text, sizeof(text),
             "MemTotal:       %lu kB\nMemFree:          1000 kB\nMemAvailable:   %lu kB\n"
             "Buffers:            0 kB\n",
             total_kb, avail_kb);
    write_file("meminfo", text);
}

static double num(json_t *s, const char *key)
{
    return json_real_value(json_object_get(s, key));
}

TEST(first_sample_then_load_since_the_previous_one)
{
    struct usage u = {0};
    set_cpu(1000, 9000, 0);
    set_ram(16 * 1024 * 1024, 12 * 1024 * 1024); /* 4 GB used */
    json_t *s = usage_sample(&u, proc);
    ASSERT(s != NULL);
    EXPECT(num(s, "cpu_load_percent") == 0.0);
    EXPECT(fabs(num(s, "ram_used_gb") - 4.0) < 1e-9);
    json_decref(s);

    /* +300 busy, +600 idle, +100 iowait: 30 % */
    set_cpu(1300, 9600, 100);
    s = usage_sample(&u, proc);
    ASSERT(s != NULL);
    EXPECT(fabs(num(s, "cpu_load_percent") - 30.0) < 1e-9);
    json_decref(s);
}

TEST(the_deadband_holds_small_moves_back)
{
    struct usage u = {0};
    set_cpu(0, 1000, 0);
    set_ram(10 * 1024 * 1024, 5 * 1024 * 1024); /* 5 GB */
    json_t *s = usage_sample(&u, proc);
    ASSERT(s != NULL);
    json_decref(s);

    set_cpu(40, 2000, 0); /* 40 / 1040 = 3.8 %: within 5 points of 0 */
    set_ram(10 * 1024 * 1024, 5 * 1024 * 1024 - 100 * 1024); /* 5.1 GB: 2 % more */
    EXPECT(usage_sample(&u, proc) == NULL);

    set_cpu(140, 2500, 0); /* 100 / 600: 16.7 % */
    s = usage_sample(&u, proc);
    ASSERT(s != NULL);
    EXPECT(fabs(num(s, "cpu_load_percent") - 16.7) < 1e-9);
    json_decref(s);

    set_cpu(240, 3000, 0); /* 100 / 600 again: no move */
    EXPECT(usage_sample(&u, proc) == NULL);
    set_ram(10 * 1024 * 1024, 4 * 1024 * 1024); /* 6 GB: 18 % more than 5.1 */
    s = usage_sample(&u, proc);
    ASSERT(s != NULL);
    EXPECT(fabs(num(s, "ram_used_gb") - 6.0) < 1e-9);
    json_decref(s);
}

TEST(unreadable_proc_gives_no_sample)
{
    struct usage u = {0};
    char path[128];
    snprintf(path, sizeof(path), "%s/meminfo", proc);
    unlink(path);
    set_cpu(1, 1, 0);
    EXPECT(usage_sample(&u, proc) == NULL);
    write_file("meminfo", "MemTotal: 100 kB\n"); /* no MemAvailable */
    EXPECT(usage_sample(&u, proc) == NULL);
    set_ram(100, 50);
    write_file("stat", "intr 1 2 3\n"); /* no cpu line */
    EXPECT(usage_sample(&u, proc) == NULL);
    EXPECT(usage_sample(&u, "/nonexistent/proc") == NULL);
    set_cpu(1, 1, 0);
    json_t *s = usage_sample(&u, proc);
    EXPECT(s != NULL);
    json_decref(s);
}

TEST(the_real_proc_reads)
{
    struct usage u = {0};
    json_t *s = usage_sample(&u, "/proc");
    ASSERT(s != NULL);
    EXPECT(num(s, "ram_used_gb") > 0);
    json_decref(s);
}

TAP_MAIN()
