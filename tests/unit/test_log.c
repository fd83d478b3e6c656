/*
 * test_log.c - log.h: log_escape() byte by byte (newline, CR, tab, other C0
 * controls, DEL, C1 controls and U+2028/U+2029 in UTF-8, invalid UTF-8,
 * text kept as it is, cutting on an escape boundary), and lines written by
 * log_emit() in the three formats with a message and context fields that
 * try to forge a line ("\n<0>forged ..."): each record stays one line,
 * under journald its only priority is the real one, and the JSON line
 * parses with the escaped text in its members.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "log.h"
#include "tap.h"
#include "util.h"

static void expect_escaped(const char *in, const char *want)
{
    char out[256];
    size_t n = log_escape(out, sizeof(out), in);
    if (strcmp(out, want) != 0 || n != strlen(want))
        TAP_FAIL_("log_escape(\"%s\") = \"%s\" (%zu), want \"%s\"", in, out, n, want);
}

TEST(escapes_what_could_break_a_line)
{
    expect_escaped("plain text, 100% ok", "plain text, 100% ok");
    expect_escaped("a\nb", "a\\nb");
    expect_escaped("\r\t", "\\r\\t");
    expect_escaped("\n<0>forged", "\\n<0>forged");
    expect_escaped("\x01\x1b[31mred", "\\x01\\x1b[31mred");
    expect_escaped("del\x7f", "del\\x7f");
    expect_escaped("back\\slash \"quoted\"", "back\\slash \"quoted\"");
    expect_escaped("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
                   "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    expect_escaped("nel\xc2\x85", "nel\\xc2\\x85"); /* C1 NEXT LINE */
    expect_escaped("\xc2\x9b"
                   "31m",
                   "\\xc2\\x9b31m");                /* C1 CSI */
    expect_escaped("\xc2\xa0nbsp", "\xc2\xa0nbsp"); /* U+00A0 is text */
    expect_escaped("ls\xe2\x80\xa8ps\xe2\x80\xa9", "ls\\xe2\\x80\\xa8ps\\xe2\\x80\\xa9");
    expect_escaped("bad\xff\xfe", "bad\\xff\\xfe");
    expect_escaped("cut\xc3", "cut\\xc3");             /* a truncated sequence */
    expect_escaped("\xed\xa0\x80", "\\xed\\xa0\\x80"); /* a UTF-16 surrogate */
    expect_escaped("", "");
}

TEST(cuts_before_an_escape_that_does_not_fit)
{
    char out[8];
    EXPECT_EQ_INT(log_escape(out, 5, "ab\ncd"), 4);
    EXPECT(strcmp(out, "ab\\n") == 0);
    EXPECT_EQ_INT(log_escape(out, 4, "ab\ncd"), 2);
    EXPECT(strcmp(out, "ab") == 0);
    EXPECT_EQ_INT(log_escape(out, 6, "a\x01z"), 5);
    EXPECT(strcmp(out, "a\\x01") == 0);
    EXPECT_EQ_INT(log_escape(out, 5, "a\x01z"), 1);
    EXPECT(strcmp(out, "a") == 0);
    EXPECT_EQ_INT(log_escape(out, 3, "\xc3\xa9\xc3\xa9"), 2); /* whole characters only */
    EXPECT(strcmp(out, "\xc3\xa9") == 0);
    EXPECT_EQ_INT(log_escape(out, 1, "abc"), 0);
    EXPECT(out[0] == '\0');
    char big[4 * 300 + 1], in[301];
    memset(in, '\n', 300);
    in[300] = '\0';
    EXPECT_EQ_INT(log_escape(big, sizeof(big), in), 600);
}

/* What log_emit() writes to stderr for one record in `fmt`. */
static char *emit_captured(enum log_format fmt, const struct log_ctx *ctx, const char *arg)
{
    char path[] = "/tmp/avt-test-log.XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    log_init(LOG_DEBUG, fmt);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    log_emit(LOG_WARNING, ctx, "task %s refused", arg);
    dup2(saved, STDERR_FILENO);
    close(saved);
    char *text = read_file(path, 1 << 16, NULL);
    unlink(path);
    return text;
}

static int lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static const struct log_ctx hostile = {.plugin = "p",
                                       .task_id = "t1\n<0>forged task",
                                       .job_id = "j1\r\n<1>forged job",
                                       .type = "x\x1b[2J"};

TEST(a_record_stays_one_line_in_every_format)
{
    char *j = emit_captured(LOG_FORMAT_JOURNAL, &hostile, "t1\n<0>forged msg");
    ASSERT(j != NULL);
    EXPECT_EQ_INT(lines(j), 1);
    EXPECT(strncmp(j, "<4>task t1\\n<0>forged msg refused", 33) == 0);
    EXPECT(strstr(j, " plugin=p task_id=t1\\n<0>forged task job_id=j1\\r\\n<1>forged job "
                     "type=x\\x1b[2J\n") != NULL);
    free(j);

    char *p = emit_captured(LOG_FORMAT_PLAIN, &hostile, "t1\n<0>forged msg");
    ASSERT(p != NULL);
    EXPECT_EQ_INT(lines(p), 1);
    EXPECT(strstr(p, " warning task t1\\n<0>forged msg refused plugin=p task_id=t1\\n<0>forged "
                     "task ") != NULL);
    free(p);

    char *s = emit_captured(LOG_FORMAT_JSON, &hostile, "t1\n<0>forged msg\xff");
    ASSERT(s != NULL);
    EXPECT_EQ_INT(lines(s), 1);
    json_t *o = json_loads(s, 0, NULL);
    ASSERT(o != NULL); /* invalid UTF-8 in the message no longer loses it */
    EXPECT(strcmp(json_string_value(json_object_get(o, "msg")),
                  "task t1\\n<0>forged msg\\xff refused") == 0);
    EXPECT(strcmp(json_string_value(json_object_get(o, "task_id")), "t1\\n<0>forged task") == 0);
    EXPECT(strcmp(json_string_value(json_object_get(o, "job_id")), "j1\\r\\n<1>forged job") == 0);
    EXPECT(strcmp(json_string_value(json_object_get(o, "type")), "x\\x1b[2J") == 0);
    json_decref(o);
    free(s);
}

TEST(a_long_hostile_message_is_cut_not_split)
{
    char arg[3000];
    memset(arg, '\n', sizeof(arg) - 1);
    arg[sizeof(arg) - 1] = '\0';
    char *j = emit_captured(LOG_FORMAT_JOURNAL, NULL, arg);
    ASSERT(j != NULL);
    EXPECT_EQ_INT(lines(j), 1);
    EXPECT(strncmp(j, "<4>task \\n\\n", 12) == 0);
    free(j);
}

TAP_MAIN()
