/*
 * test_sign.c - RXON 1.0b14 signatures (PROTOCOL-1.0b14.md 2): the HMAC of
 * every vector the orchestrator's code produced (tests/data/rxon14/), the
 * bytes sign_message() sends (they re-canonicalize to exactly the signed
 * bytes, and survive the orchestrator's normalisation), and the ways
 * sign_verify() refuses: wrong key, tampered body, uppercase hex, missing or
 * malformed signature, empty key.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "canon.h"
#include "rxon_vectors.h"
#include "sign.h"
#include "tap.h"
#include "util.h"

static const char *const bubbling[] = {"bubbling_chain", NULL};

/* sign_message() of a C string with key "k" and signer "w1". */
static char *sign(const char *body, const char *const *ignore)
{
    char err[AVT_ERRLEN], *out = NULL;
    if (sign_message(body, strlen(body), "k", "w1", ignore, &out, NULL, err, sizeof(err)) != 0)
        printf("# sign_message(%s): %s\n", body, err);
    return out;
}

static int verify(const char *body, const char *key, const char *const *ignore, char *why,
                  size_t whylen)
{
    why[0] = '\0';
    return sign_verify(body, strlen(body), key, ignore, why, whylen);
}

/* The sent bytes of a vector: canon_json() of them is the canonical, their
 * signature the vector's HMAC, and sign_verify() accepts them. */
static int check_sent(const json_t *v, const char *const *ignore, const char *sent, size_t len)
{
    const char *name = rxon_str(v, "name"), *hmac = rxon_str(v, "hmac_sha256_hex");
    char err[AVT_ERRLEN], *again = NULL, needle[160];
    int ok = 1;

    if (canon_json(sent, len, ignore, &again, NULL, err, sizeof(err)) != 0 ||
        strcmp(again, rxon_str(v, "canonical")) != 0) {
        TAP_FAIL_("vector %s: sent bytes do not re-canonicalize to the canonical", name);
        ok = 0;
    }
    snprintf(needle, sizeof(needle), "\"security\":{\"signature\":\"%s\",\"signer_id\":\"w1\"}}",
             hmac);
    if (len < strlen(needle) || strcmp(sent + len - strlen(needle), needle) != 0) {
        TAP_FAIL_("vector %s: sent %s does not end with %s", name, sent, needle);
        ok = 0;
    }
    if (sign_verify(sent, len, rxon_str(v, "secret"), ignore, err, sizeof(err)) != 0) {
        TAP_FAIL_("vector %s: sign_verify: %s", name, err);
        ok = 0;
    }
    free(again);
    return ok;
}

/* One vector: the HMAC of its canonical bytes, then sign_message() on its
 * payload (refused for the error vectors). */
static int check_vector(const json_t *v)
{
    const char *name = rxon_str(v, "name"), *payload = rxon_str(v, "payload_json");
    const char *secret = rxon_str(v, "secret"), *canonical = rxon_str(v, "canonical");
    const char *ignore[RXON_IGNORE_MAX + 1];
    char hex[SIGN_HEXLEN + 1], err[AVT_ERRLEN] = "", *sent = NULL;
    size_t len = 0;

    if (name == NULL || payload == NULL || secret == NULL || rxon_ignore(v, ignore) < 0) {
        TAP_FAIL_("vector %s: malformed", name ? name : "?");
        return 0;
    }
    int rc =
        sign_message(payload, strlen(payload), secret, "w1", ignore, &sent, &len, err, sizeof(err));
    if (json_object_get(v, "error") != NULL) {
        free(sent);
        if (rc == -EINVAL && sent == NULL && err[0] != '\0')
            return 1;
        TAP_FAIL_("vector %s: rc %d, want -EINVAL (%s)", name, rc, rxon_str(v, "error"));
        return 0;
    }
    int ok = canonical != NULL && rc == 0;
    if (!ok)
        TAP_FAIL_("vector %s: sign_message rc %d: %s", name, rc, err);
    if (ok && (sign_hmac_hex(secret, canonical, strlen(canonical), hex) != 0 ||
               strcmp(hex, rxon_str(v, "hmac_sha256_hex")) != 0)) {
        TAP_FAIL_("vector %s: HMAC %s, want %s", name, hex, rxon_str(v, "hmac_sha256_hex"));
        ok = 0;
    }
    ok = ok && check_sent(v, ignore, sent, len);
    free(sent);
    return ok;
}

static void check_file(const char *file, size_t want_count)
{
    rxon_vectors_check(file, want_count, check_vector, "signed as the orchestrator signs them");
}

TEST(vectors_main)
{
    check_file(RXON_VECTORS_MAIN, 26);
}

TEST(vectors_extra)
{
    check_file(RXON_VECTORS_EXTRA, 74);
}

TEST(hmac_known_answers)
{
    char hex[SIGN_HEXLEN + 1];
    /* RFC 4231, test case 2. */
    ASSERT(sign_hmac_hex("Jefe", "what do ya want for nothing?", 28, hex) == 0);
    EXPECT_EQ_STR(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* PROTOCOL-1.0b14.md 2.2, the worked example. */
    const char *msg =
        "{\"data\":{\"msg\":\"hi\"},\"job_id\":\"2796adbc-519b-4f6e-af21-2f821428d371\","
        "\"status\":\"success\",\"task_id\":\"task-680f9f0d-bcfe-4e12-9305-"
        "2a64e56f29a4\",\"timestamp\":1796599254,\"worker_id\":\"w1\"}";
    ASSERT(sign_hmac_hex("worker-token", msg, strlen(msg), hex) == 0);
    EXPECT_EQ_STR(hex, "432e1bd052b1fc03223edce8f3575cc4781c15043dca904556e4ec77fe4d899c");
    /* An empty message is still a message. */
    ASSERT(sign_hmac_hex("k", "", 0, hex) == 0);
    EXPECT_EQ_INT(strlen(hex), SIGN_HEXLEN);
}

/* Five keys and their MACs: RFC 4231 test cases 1 to 4 (cases 1 and 3 have
 * keys of the same length) and PROTOCOL-1.0b14.md's worked example. One
 * more key than a thread keeps. */
enum { NKEYS = 5 };
static const char *const mac_key[NKEYS] = {
    "\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b", "Jefe",
    "\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa",
    "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17"
    "\x18\x19",
    "worker-token"};
static char mac_msg3[51], mac_msg4[51];
static const char *mac_msg[NKEYS] = {
    "Hi There", "what do ya want for nothing?", mac_msg3, mac_msg4,
    "{\"data\":{\"msg\":\"hi\"},\"job_id\":\"2796adbc-519b-4f6e-af21-2f821428d371\","
    "\"status\":\"success\",\"task_id\":\"task-680f9f0d-bcfe-4e12-9305-"
    "2a64e56f29a4\",\"timestamp\":1796599254,\"worker_id\":\"w1\"}"};
static const char *const mac_want[NKEYS] = {
    "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    "432e1bd052b1fc03223edce8f3575cc4781c15043dca904556e4ec77fe4d899c"};

static void mac_init(void)
{
    memset(mac_msg3, 0xdd, 50);
    memset(mac_msg4, 0xcd, 50);
}

/* 0 when key k gives its MAC. */
static int mac_check(int k)
{
    char hex[SIGN_HEXLEN + 1];
    return sign_hmac_hex(mac_key[k], mac_msg[k], strlen(mac_msg[k]), hex) == 0 &&
                   strcmp(hex, mac_want[k]) == 0
               ? 0
               : -1;
}

static void *mac_thread(void *arg)
{
    int i = (int)(intptr_t)arg, bad = 0;
    for (int round = 0; round < 300; round++)
        bad += mac_check((i + round / (i + 1)) % NKEYS) != 0;
    sign_forget();
    return (void *)(intptr_t)bad;
}

TEST(the_key_can_change_between_messages_on_one_thread_and_across_threads)
{
    /* A thread keeps the contexts of its last few keys: each key, in every
     * order (new, kept, evicted and back, two keys of one length), must
     * give its own MAC. */
    mac_init();
    static const int order[] = {0, 1, 0, 2, 0, 3, 4, 0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 2, 4, 1, 3, 0};
    for (size_t r = 0; r < ARRAY_LEN(order); r++) {
        if (mac_check(order[r]) != 0)
            TAP_FAIL_("round %zu: key %d does not give its MAC", r, order[r]);
    }
    /* A key that is a prefix of a kept one is another key. */
    char hex[SIGN_HEXLEN + 1];
    ASSERT(sign_hmac_hex("Jef", mac_msg[1], strlen(mac_msg[1]), hex) == 0);
    EXPECT(strcmp(hex, mac_want[1]) != 0);
    EXPECT_EQ_INT(mac_check(1), 0);
    /* Forgotten, then keyed again. */
    sign_forget();
    sign_forget();
    EXPECT_EQ_INT(mac_check(3), 0);
    EXPECT_EQ_INT(mac_check(3), 0);
    /* Four threads, each going through the keys at its own pace. */
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        ASSERT(pthread_create(&th[i], NULL, mac_thread, (void *)(intptr_t)i) == 0);
    for (int i = 0; i < 4; i++) {
        void *bad;
        pthread_join(th[i], &bad);
        EXPECT_EQ_INT((int)(intptr_t)bad, 0);
    }
    sign_forget();
}

TEST(empty_key_is_refused)
{
    char hex[SIGN_HEXLEN + 1] = "x", err[AVT_ERRLEN], *out = (char *)1;
    EXPECT_EQ_INT(sign_hmac_hex("", "m", 1, hex), -EINVAL);
    EXPECT_EQ_STR(hex, "");
    EXPECT_EQ_INT(sign_hmac_hex(NULL, "m", 1, hex), -EINVAL);
    EXPECT_EQ_INT(sign_message("{}", 2, "", "w1", NULL, &out, NULL, err, sizeof(err)), -EINVAL);
    EXPECT(out == NULL);
    EXPECT_CONTAINS(err, "empty signing key");
    EXPECT_EQ_INT(sign_verify("{}", 2, "", NULL, err, sizeof(err)), -EINVAL);
}

TEST(message_layout)
{
    char err[AVT_ERRLEN], *out, hex[SIGN_HEXLEN + 1], want[256];
    size_t len;

    /* An empty object gets no leading comma. */
    ASSERT(sign_message("{}", 2, "k", "w1", NULL, &out, &len, err, sizeof(err)) == 0);
    ASSERT(sign_hmac_hex("k", "{}", 2, hex) == 0);
    snprintf(want, sizeof(want), "{\"security\":{\"signature\":\"%s\",\"signer_id\":\"w1\"}}", hex);
    EXPECT_EQ_STR(out, want);
    EXPECT_EQ_INT(len, strlen(out));
    free(out);
    /* The body is sent canonical; a security member already there is
     * replaced; signer_id NULL leaves it out. */
    const char *body = "{ \"b\": [1.0, null], \"a\": {\"x\": null}, \"security\": {\"s\": 1} }";
    ASSERT(sign_message(body, strlen(body), "k", NULL, NULL, &out, &len, err, sizeof(err)) == 0);
    const char *canonical = "{\"a\":{},\"b\":[1,null]}";
    ASSERT(sign_hmac_hex("k", canonical, strlen(canonical), hex) == 0);
    snprintf(want, sizeof(want), "{\"a\":{},\"b\":[1,null],\"security\":{\"signature\":\"%s\"}}",
             hex);
    EXPECT_EQ_STR(out, want);
    free(out);
}

TEST(signer_id_is_escaped)
{
    char err[AVT_ERRLEN], *out;
    const char *id = "w\"1\\\n\xc3\xa9";
    ASSERT(sign_message("{\"a\":1}", 7, "k", id, NULL, &out, NULL, err, sizeof(err)) == 0);
    EXPECT_CONTAINS(out, "\"signer_id\":\"w\\\"1\\\\\\n\xc3\xa9\"}}");
    json_t *j = json_loads(out, 0, NULL);
    ASSERT(j != NULL);
    EXPECT_EQ_STR(json_string_value(json_object_get(json_object_get(j, "security"), "signer_id")),
                  id);
    json_decref(j);
    free(out);
    EXPECT_EQ_INT(sign_message("{}", 2, "k", "w\xff", NULL, &out, NULL, err, sizeof(err)), -EINVAL);
    EXPECT(out == NULL);
}

TEST(ignored_members_are_sent_but_not_signed)
{
    char err[AVT_ERRLEN], why[AVT_ERRLEN], *out, *signed_ = NULL, hex[SIGN_HEXLEN + 1];
    const char *body = "{\"worker_id\":\"w1\",\"bubbling_chain\":[\"p1\"],\"n\":null}";

    ASSERT(sign_message(body, strlen(body), "k", "w1", bubbling, &out, NULL, err, sizeof(err)) ==
           0);
    EXPECT_CONTAINS(out, "\"bubbling_chain\":[\"p1\"]");
    ASSERT(canon_json(out, strlen(out), bubbling, &signed_, NULL, err, sizeof(err)) == 0);
    EXPECT_EQ_STR(signed_, "{\"worker_id\":\"w1\"}");
    ASSERT(sign_hmac_hex("k", signed_, strlen(signed_), hex) == 0);
    EXPECT_CONTAINS(out, hex);
    EXPECT_EQ_INT(verify(out, "k", bubbling, why, sizeof(why)), 0);
    /* Without the ignore list the chain is signed too: a mismatch. */
    EXPECT_EQ_INT(verify(out, "k", NULL, why, sizeof(why)), -EPERM);
    free(signed_);
    free(out);
}

/* The orchestrator re-parses and normalises what it receives: members
 * reordered, whitespace, nulls added, integral doubles, escapes in place of
 * raw UTF-8 all still verify. */
TEST(sent_bytes_survive_normalisation)
{
    char why[AVT_ERRLEN], *out = sign("{\"t\":1796599254,\"s\":\"h\xc3\xa9\",\"f\":[0.5,2]}", NULL);
    ASSERT(out != NULL);
    json_t *j = json_loads(out, 0, NULL);
    ASSERT(j != NULL);
    json_object_set_new(j, "extra", json_null());
    json_object_set_new(j, "t", json_real(1796599254.0));
    char *pretty = json_dumps(j, JSON_INDENT(3) | JSON_ENSURE_ASCII);
    ASSERT(pretty != NULL);
    EXPECT_CONTAINS(pretty, "\"h\\u00"); /* jansson escapes é, in uppercase hex */
    EXPECT_EQ_INT(verify(pretty, "k", NULL, why, sizeof(why)), 0);
    EXPECT_EQ_INT(verify(out, "k", NULL, why, sizeof(why)), 0);
    free(pretty);
    json_decref(j);
    free(out);
}

/* Replace the first occurrence of from in s (same length) in place. */
static void patch(char *s, const char *from, const char *to)
{
    char *p = strstr(s, from);
    if (p != NULL)
        memcpy(p, to, strlen(to));
}

TEST(verify_refuses)
{
    char why[AVT_ERRLEN], *out = sign("{\"status\":\"success\",\"n\":10}", NULL);
    ASSERT(out != NULL);
    EXPECT_EQ_INT(verify(out, "k", NULL, why, sizeof(why)), 0);

    EXPECT_EQ_INT(verify(out, "K", NULL, why, sizeof(why)), -EPERM); /* wrong key */
    EXPECT_CONTAINS(why, "signature does not match");
    char *tampered = xstrdup(out);
    patch(tampered, "\"n\":10", "\"n\":11");
    EXPECT_EQ_INT(verify(tampered, "k", NULL, why, sizeof(why)), -EPERM);
    free(tampered);

    char *upper = xstrdup(out), *sig = strstr(upper, "\"signature\":\"") + 13;
    for (int i = 0; i < SIGN_HEXLEN; i++)
        sig[i] = (char)(sig[i] >= 'a' && sig[i] <= 'f' ? sig[i] - 32 : sig[i]);
    EXPECT_EQ_INT(verify(upper, "k", NULL, why, sizeof(why)), -EPERM);
    EXPECT_CONTAINS(why, "lowercase hex");
    free(upper);

    EXPECT_EQ_INT(verify("{\"n\":10}", "k", NULL, why, sizeof(why)), -EPERM);
    EXPECT_CONTAINS(why, "no security.signature");
    EXPECT_EQ_INT(verify("{\"security\":{\"signature\":\"\"}}", "k", NULL, why, sizeof(why)),
                  -EPERM);
    EXPECT_EQ_INT(verify("{\"security\":{\"signature\":7}}", "k", NULL, why, sizeof(why)), -EPERM);
    EXPECT_EQ_INT(verify("{\"security\":\"abc\"}", "k", NULL, why, sizeof(why)), -EPERM);
    EXPECT_EQ_INT(verify("{\"security\":{\"signature\":\"abc\"}}", "k", NULL, why, sizeof(why)),
                  -EPERM);
    EXPECT_CONTAINS(why, "is not 64 hex digits");
    EXPECT_EQ_INT(verify("[1]", "k", NULL, why, sizeof(why)), -EINVAL);
    EXPECT_CONTAINS(why, "top level is not an object");
    free(out);
}

/* Found by fuzz_canon (seed nul_escape): jansson, which read the signature
 * at first, refuses a NUL in a key, so this body failed to verify. */
TEST(verify_reads_any_canonicalizable_body)
{
    static const char body[] = "{\"a\\u0000\":\"\\u0000\",\"a\":1}";
    char err[AVT_ERRLEN], *out;
    size_t len;
    ASSERT(sign_message(body, sizeof(body) - 1, "k", "w1", NULL, &out, &len, err, sizeof(err)) ==
           0);
    EXPECT_EQ_INT(sign_verify(out, len, "k", NULL, err, sizeof(err)), 0);
    /* The signature is compared as the orchestrator decodes it: an escaped
     * hex digit is that digit. */
    char *sig = strstr(out, "\"signature\":\"") + 13;
    char *escaped = xasprintf("%.*s\\u%04x%s", (int)(sig - out), out, sig[0], sig + 1);
    EXPECT_EQ_INT(sign_verify(escaped, strlen(escaped), "k", NULL, err, sizeof(err)), 0);
    free(escaped);
    free(out);
}

TEST(unsignable_bodies_are_refused)
{
    char err[AVT_ERRLEN], *out = NULL;
    const char *bad[] = {"{\"x\":18446744073709551616}", "{\"x\":1e20}",
                         "{\"s\":\"\\ud800\"}",          "[]",
                         "{\"s\":\"\xc0\xaf\"}",         "{\"a\":"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        EXPECT_EQ_INT(
            sign_message(bad[i], strlen(bad[i]), "k", "w1", NULL, &out, NULL, err, sizeof(err)),
            -EINVAL);
        EXPECT(out == NULL && err[0] != '\0');
    }
}

static void *sign_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 200; i++) {
        char err[AVT_ERRLEN], *out = sign("{\"i\":0.25,\"s\":\"\\u00e9\",\"n\":null}", NULL);
        if (out == NULL || sign_verify(out, strlen(out), "k", NULL, err, sizeof(err)) != 0)
            return (void *)1;
        free(out);
    }
    return NULL;
}

/* Signing is a pure function: threads need no lock (thread sanitizer). */
TEST(concurrent_signing)
{
    pthread_t t[4];
    for (size_t i = 0; i < ARRAY_LEN(t); i++)
        ASSERT(pthread_create(&t[i], NULL, sign_thread, NULL) == 0);
    for (size_t i = 0; i < ARRAY_LEN(t); i++) {
        void *rv;
        pthread_join(t[i], &rv);
        EXPECT(rv == NULL);
    }
}

TAP_MAIN()
