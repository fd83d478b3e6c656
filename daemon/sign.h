/*
 * sign.h - RXON 1.0b14 message signatures (PROTOCOL-1.0b14.md 2): the
 * lowercase hex HMAC-SHA256 of the canonical JSON (canon.h), keyed with the
 * UTF-8 bytes of the worker's token, and the `security` member that carries
 * it. HMAC comes from OpenSSL's libcrypto.
 *
 * Everything here is a pure function of its arguments: no global state, safe
 * to call from any thread.
 */
#ifndef AVT_DAEMON_SIGN_H
#define AVT_DAEMON_SIGN_H

#include <stddef.h>

#define SIGN_HEXLEN 64 /* characters of a signature, without the NUL */

/*
 * Lowercase hex HMAC-SHA256 of msg[0..len) keyed with the bytes of key (a
 * NUL-terminated string) into out (SIGN_HEXLEN + 1 bytes, NUL-terminated).
 * Returns 0, or -EINVAL for an empty key (rxon refuses one) or a failure in
 * libcrypto.
 */
int sign_hmac_hex(const char *key, const void *msg, size_t len, char out[SIGN_HEXLEN + 1]);

/*
 * Forget the keys the calling thread signed with: the HMAC contexts kept
 * for them are freed and the copies of the keys cleansed (the next call
 * keys a context again). The daemon calls it after a reload, whose keys may
 * have changed, and at its end; a thread that ends forgets by itself.
 */
void sign_forget(void);

/*
 * The bytes to send for the JSON object body[0..len): its canonical form
 * (canon_json(), with every top-level member kept except `security`) with
 * `"security":{"signature":"<hex>","signer_id":<signer_id>}` appended as its
 * last member. The signature is computed over canon_json(body, ignore_top),
 * i.e. without the members named in ignore_top (NULL-terminated, NULL:
 * none; events use {"bubbling_chain", NULL}), which are still sent.
 *
 * A `security` member already in body is replaced. signer_id is quoted like
 * any JSON string; NULL leaves signer_id out (the orchestrator then does not
 * compare it with the authenticated worker id).
 *
 * The sent bytes re-canonicalize to exactly the signed bytes:
 * canon_json(*out, ignore_top) is the message the HMAC covers, because the
 * canonical form is a fixed point of canon_json() and the top-level
 * `security` is dropped. The orchestrator therefore verifies what was sent,
 * whatever it normalises.
 *
 * Returns 0 and a malloc'd NUL-terminated string in *out (length in *outlen,
 * which may be NULL), or -EINVAL with a reason in err: an empty key, a body
 * canon_json() refuses (not an object, an integer outside [-2^63, 2^64-1],
 * nesting, encoding), or a signer_id that is not UTF-8.
 */
int sign_message(const char *body, size_t len, const char *key, const char *signer_id,
                 const char *const *ignore_top, char **out, size_t *outlen, char *err,
                 size_t errlen);

/*
 * Check the signature of a received or about-to-be-sent body the way the
 * orchestrator does: the top-level security.signature must equal the HMAC of
 * canon_json(body, ignore_top) under key, as lowercase hex (uppercase hex is
 * a mismatch, like rxon's compare_digest on strings). The comparison takes
 * constant time (CRYPTO_memcmp). signer_id is not checked.
 *
 * Returns 0 when it matches; -EPERM with a reason in why when the signature
 * is missing, malformed or different; -EINVAL when the key is empty or the
 * body cannot be canonicalized.
 */
int sign_verify(const char *body, size_t len, const char *key, const char *const *ignore_top,
                char *why, size_t whylen);

#endif /* AVT_DAEMON_SIGN_H */
