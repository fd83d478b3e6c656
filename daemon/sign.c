/*
 * sign.c - signing and checking RXON 1.0b14 messages (PROTOCOL-1.0b14.md
 * 2). The message is canon_json()'s output; the MAC is OpenSSL's
 * HMAC-SHA256 (EVP_MAC), written as lowercase hex. What is sent is the
 * canonical text itself plus the `security` member, so the orchestrator's
 * normalisation (null removal, integral doubles to integers, key order) is
 * a no-op on it and the signed tree is the sent tree by construction.
 * sign_verify() is the receiving side, for tests and self-checks; it reads
 * security.signature with canon_lookup(), so it accepts every body
 * canon_json() does (jansson, for one, refuses a NUL in a key).
 */
#include "sign.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "canon.h"
#include "util.h"

/*
 * HMAC-SHA256 keyed once per key, per thread. OpenSSL 3's one-shot HMAC()
 * fetches HMAC and SHA-256 from the provider and keys a new context on every
 * call: in the daemon, where each call comes cold between other work, that
 * was three quarters of signing a 1.0b14 result and about 5 % of its CPU
 * per task at one slot (perf). Each thread keeps the contexts of the last
 * SIGN_KEYS keys it used (one per orchestrator that has its own key, most
 * recent first) as templates, duplicated for each message; a copy of each
 * key tells whether the next call uses it. A copy is cleansed when its entry
 * is evicted, at sign_forget() and when its thread ends (glibc runs no
 * thread-key destructor for the main thread: the daemon calls sign_forget()
 * after a reload and at its end).
 */
#define SIGN_KEYS 4

struct mac_entry {
    EVP_MAC_CTX *tmpl; /* keyed with key */
    char *key;
    size_t klen;
};

struct mac_cache {
    struct mac_entry e[SIGN_KEYS]; /* most recent first; tmpl NULL: unused */
};

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static int cache_ok;

static void entry_clear(struct mac_entry *e)
{
    EVP_MAC_CTX_free(e->tmpl);
    if (e->key != NULL) {
        OPENSSL_cleanse(e->key, e->klen);
        free(e->key);
    }
    *e = (struct mac_entry){0};
}

static void cache_free(void *p)
{
    struct mac_cache *c = p;
    for (int i = 0; c != NULL && i < SIGN_KEYS; i++)
        entry_clear(&c->e[i]);
    free(c);
}

static void cache_init(void)
{
    cache_ok = pthread_key_create(&cache_key, cache_free) == 0;
}

void sign_forget(void)
{
    pthread_once(&cache_once, cache_init);
    if (!cache_ok)
        return;
    cache_free(pthread_getspecific(cache_key));
    pthread_setspecific(cache_key, NULL);
}

/* A new context keyed with key (klen bytes), NULL when libcrypto fails. */
static EVP_MAC_CTX *keyed_new(const char *key, size_t klen)
{
    static char digest[] = "SHA256"; /* OSSL_PARAM wants it writable */
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac); /* ctx holds its own reference */
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    if (ctx != NULL && EVP_MAC_init(ctx, (const unsigned char *)key, klen, params) != 1) {
        EVP_MAC_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

/* This thread's cache, NULL when there can be none. */
static struct mac_cache *cache_get(void)
{
    pthread_once(&cache_once, cache_init);
    if (!cache_ok)
        return NULL;
    struct mac_cache *c = pthread_getspecific(cache_key);
    if (c == NULL) {
        c = xcalloc(1, sizeof(*c));
        if (pthread_setspecific(cache_key, c) != 0) {
            free(c);
            c = NULL;
        }
    }
    return c;
}

/* A context keyed with key, ready for one message (free it after). */
static EVP_MAC_CTX *keyed(const char *key, size_t klen)
{
    struct mac_cache *c = cache_get();
    if (c == NULL) /* no cache on this thread: key a context for this call */
        return keyed_new(key, klen);
    int i = 0;
    while (i < SIGN_KEYS && c->e[i].tmpl != NULL &&
           (c->e[i].klen != klen || CRYPTO_memcmp(c->e[i].key, key, klen) != 0))
        i++;
    if (i == SIGN_KEYS || c->e[i].tmpl == NULL) { /* a new key: in the last place */
        i = SIGN_KEYS - 1;
        while (i > 0 && c->e[i - 1].tmpl == NULL)
            i--;
        entry_clear(&c->e[i]);
        EVP_MAC_CTX *tmpl = keyed_new(key, klen);
        if (tmpl == NULL)
            return NULL;
        c->e[i] = (struct mac_entry){.tmpl = tmpl, .key = xmalloc(klen), .klen = klen};
        memcpy(c->e[i].key, key, klen);
    }
    struct mac_entry hit = c->e[i]; /* to the front */
    memmove(&c->e[1], &c->e[0], (size_t)i * sizeof(c->e[0]));
    c->e[0] = hit;
    return EVP_MAC_CTX_dup(hit.tmpl);
}

int sign_hmac_hex(const char *key, const void *msg, size_t len, char out[SIGN_HEXLEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t mdlen = 0;
    size_t klen = key != NULL ? strlen(key) : 0;

    out[0] = '\0';
    if (klen == 0 || klen > INT_MAX)
        return -EINVAL;
    EVP_MAC_CTX *ctx = keyed(key, klen);
    int ok = ctx != NULL &&
             EVP_MAC_update(ctx, (const unsigned char *)(msg != NULL ? msg : ""), len) == 1 &&
             EVP_MAC_final(ctx, md, &mdlen, sizeof(md)) == 1;
    EVP_MAC_CTX_free(ctx);
    if (!ok || mdlen * 2 != SIGN_HEXLEN)
        return -EINVAL;
    for (size_t i = 0; i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[SIGN_HEXLEN] = '\0';
    return 0;
}

static int has_names(const char *const *names)
{
    return names != NULL && names[0] != NULL;
}

static void put(char *dst, size_t *at, const char *s, size_t n)
{
    memcpy(dst + *at, s, n);
    *at += n;
}

/* canon (a canonical object, clen bytes) with the security member added
 * last; quoted_id is the quoted signer id or NULL. */
static char *with_security(const char *canon, size_t clen, const char *hex, const char *quoted_id,
                           size_t *outlen)
{
    static const char head[] = "\"security\":{\"signature\":\"", id[] = "\",\"signer_id\":";
    size_t qlen = quoted_id != NULL ? strlen(quoted_id) : 0, at = 0;
    char *s = xmalloc(clen + sizeof(head) + SIGN_HEXLEN + sizeof(id) + qlen + 4);

    put(s, &at, canon, clen - 1); /* all but the closing brace */
    if (clen > 2)
        put(s, &at, ",", 1);
    put(s, &at, head, sizeof(head) - 1);
    put(s, &at, hex, SIGN_HEXLEN);
    if (quoted_id != NULL) {
        put(s, &at, id, sizeof(id) - 1);
        put(s, &at, quoted_id, qlen);
    } else {
        put(s, &at, "\"", 1);
    }
    put(s, &at, "}}", 3); /* with the NUL */
    if (outlen != NULL)
        *outlen = at - 1;
    return s;
}

int sign_message(const char *body, size_t len, const char *key, const char *signer_id,
                 const char *const *ignore_top, char **out, size_t *outlen, char *err,
                 size_t errlen)
{
    char hex[SIGN_HEXLEN + 1], *msg = NULL, *full = NULL, *qid = NULL;
    size_t mlen, flen;
    int rc;

    *out = NULL;
    if (outlen != NULL)
        *outlen = 0;
    if (key == NULL || key[0] == '\0')
        return fmt_err(err, errlen, "empty signing key");
    if ((rc = canon_json(body, len, ignore_top, &msg, &mlen, err, errlen)) < 0)
        return rc;
    if ((rc = sign_hmac_hex(key, msg, mlen, hex)) < 0) {
        fmt_err(err, errlen, "HMAC-SHA256 failed in libcrypto");
        goto out;
    }
    if (!has_names(ignore_top)) {
        full = msg, flen = mlen, msg = NULL;
    } else if ((rc = canon_json(body, len, NULL, &full, &flen, err, errlen)) < 0) {
        goto out;
    }
    if (signer_id != NULL &&
        (rc = canon_quote(signer_id, strlen(signer_id), &qid, NULL, err, errlen)) < 0) {
        goto out;
    }
    *out = with_security(full, flen, hex, qid, outlen);
out:
    free(msg);
    free(full);
    free(qid);
    return rc;
}

/* fmt_err() for a signature that does not verify: -EPERM. */
#define perm_err(why, whylen, ...) (fmt_err(why, whylen, __VA_ARGS__), -EPERM)

/* The top-level security.signature of body as canonical JSON text, which
 * for a string of hex digits is the digits in quotes. */
static int find_signature(const char *body, size_t len, char **sig, char *why, size_t whylen)
{
    static const char *const path[] = {"security", "signature", NULL};
    size_t n;

    if (canon_lookup(body, len, path, sig, &n, why, whylen) < 0)
        return perm_err(why, whylen, "no security.signature");
    if (n < 2 || (*sig)[0] != '"')
        return perm_err(why, whylen, "security.signature is not a string");
    if (n == 2)
        return perm_err(why, whylen, "security.signature is empty");
    if (n != SIGN_HEXLEN + 2 || memchr(*sig, '\\', n) != NULL)
        return perm_err(why, whylen, "security.signature is not %d hex digits", SIGN_HEXLEN);
    return 0;
}

int sign_verify(const char *body, size_t len, const char *key, const char *const *ignore_top,
                char *why, size_t whylen)
{
    char hex[SIGN_HEXLEN + 1], *msg = NULL, *sig = NULL;
    size_t mlen;
    int rc;

    if (key == NULL || key[0] == '\0')
        return fmt_err(why, whylen, "empty signing key");
    if ((rc = canon_json(body, len, ignore_top, &msg, &mlen, why, whylen)) < 0)
        return rc;
    rc = sign_hmac_hex(key, msg, mlen, hex);
    free(msg);
    if (rc < 0)
        return fmt_err(why, whylen, "HMAC-SHA256 failed in libcrypto");
    if ((rc = find_signature(body, len, &sig, why, whylen)) == 0 &&
        CRYPTO_memcmp(sig + 1, hex, SIGN_HEXLEN) != 0) {
        rc = perm_err(why, whylen, "signature does not match%s",
                      strpbrk(sig, "ABCDEF") != NULL ? " (it must be lowercase hex)" : "");
    }
    free(sig);
    return rc;
}
