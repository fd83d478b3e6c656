/*
 * fuzz_canon.c - libFuzzer target for canon_json() (canon.h) and the
 * signing built on it (sign.h). The input is any bytes, exactly `size` of
 * them with no terminating NUL. When canon_json() accepts it, the output
 * must be a fixed point (it canonicalizes to itself), valid UTF-8 with no
 * NUL, compact (no whitespace outside strings), free of null object
 * members, and readable by jansson; sign_message() must then succeed, its
 * bytes must re-canonicalize to the signed bytes and sign_verify() must
 * accept them with the same key and refuse them with another. canon_quote()
 * of the raw input, when it is UTF-8, must be a canonical string.
 */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "canon.h"
#include "log.h"
#include "sign.h"
#include "util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const bubbling[] = {"bubbling_chain", NULL};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(getenv("AVT_FUZZ_LOG") ? LOG_DEBUG : LOG_EMERG);
    return 0;
}

static void refused_cleanly(int rc, const char *out, const char *err, size_t errlen)
{
    assert(rc == -EINVAL);
    assert(out == NULL);
    assert(memchr(err, '\0', errlen) != NULL && err[0] != '\0');
}

/* Outside strings: no whitespace and no member whose value is null. */
static void check_layout(const char *s, size_t len)
{
    int in_str = 0;
    assert(len >= 2 && s[0] == '{' && s[len - 1] == '}' && s[len] == '\0');
    assert(strlen(s) == len);
    for (size_t i = 0; i < len; i++) {
        if (in_str) {
            if (s[i] == '\\')
                i++;
            else if (s[i] == '"')
                in_str = 0;
            continue;
        }
        assert(s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r');
        if (s[i] == '"')
            in_str = 1;
        else if (s[i] == ':')
            assert(strncmp(s + i + 1, "null", 4) != 0);
    }
}

static void check_canonical(const char *out, size_t len)
{
    char err[AVT_ERRLEN], *again = NULL, *quoted = NULL;
    size_t len2 = 0;

    check_layout(out, len);
    assert(canon_quote(out, len, &quoted, NULL, err, sizeof(err)) == 0); /* valid UTF-8 */
    free(quoted);
    assert(canon_json(out, len, NULL, &again, &len2, err, sizeof(err)) == 0);
    assert(len2 == len && memcmp(again, out, len) == 0);
    free(again);
    /* An independent parser agrees it is JSON (jansson refuses a NUL in a
     * key even with JSON_ALLOW_NUL). */
    if (strstr(out, "\\u0000") == NULL) {
        json_t *j = json_loadb(out, len, JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, NULL);
        assert(json_is_object(j));
        json_decref(j);
    }
}

static void check_signing(const char *body, size_t size)
{
    char err[AVT_ERRLEN], *sent = NULL, *a = NULL, *b = NULL;
    size_t sent_len = 0;

    int rc =
        sign_message(body, size, "fuzz-key", "w1", bubbling, &sent, &sent_len, err, sizeof(err));
    assert(rc == 0 && sent != NULL && strlen(sent) == sent_len);
    assert(canon_json(body, size, bubbling, &a, NULL, err, sizeof(err)) == 0);
    assert(canon_json(sent, sent_len, bubbling, &b, NULL, err, sizeof(err)) == 0);
    assert(strcmp(a, b) == 0);
    assert(sign_verify(sent, sent_len, "fuzz-key", bubbling, err, sizeof(err)) == 0);
    assert(sign_verify(sent, sent_len, "fuzz-kez", bubbling, err, sizeof(err)) == -EPERM);
    free(a);
    free(b);
    free(sent);
}

/* A quoted string is a canonical JSON string: {"k":<quoted>} is its own
 * canonical form. */
static void check_quote(const char *s, size_t size)
{
    char err[AVT_ERRLEN], *quoted = NULL, *doc, *out = NULL;
    size_t qlen = 0, olen = 0;

    int rc = canon_quote(s, size, &quoted, &qlen, err, sizeof(err));
    if (rc < 0) {
        refused_cleanly(rc, quoted, err, sizeof(err));
        return;
    }
    doc = xasprintf("{\"k\":%s}", quoted);
    assert(canon_json(doc, strlen(doc), NULL, &out, &olen, err, sizeof(err)) == 0);
    assert(strcmp(out, doc) == 0);
    free(out);
    free(doc);
    free(quoted);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    char err[AVT_ERRLEN], *out = (char *)1;
    size_t len = 0;

    memset(err, 'x', sizeof(err));
    int rc = canon_json(body, size, NULL, &out, &len, err, sizeof(err));
    if (rc < 0) {
        refused_cleanly(rc, out, err, sizeof(err));
    } else {
        assert(rc == 0 && out != NULL);
        check_canonical(out, len);
        check_signing(body, size);
        free(out);
    }
    check_quote(body, size);
    return 0;
}
