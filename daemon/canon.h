/*
 * canon.h - the canonical JSON text that RXON 1.0b14 signs
 * (PROTOCOL-1.0b14.md 2.2 and 2.3).
 *
 * The orchestrator signs the value tree orjson parses from the request body,
 * normalised by rxon's to_dict(): object members whose value is null removed
 * at every depth, doubles with an integral value turned into integers, the
 * top-level `security` member (and, for events, `bubbling_chain`) dropped,
 * then serialised compactly with sorted keys. canon_json() computes the same
 * bytes from JSON text, without going through jansson (which cannot hold the
 * integers in [2^63, 2^64) that orjson keeps exactly).
 *
 * Everything here is a pure function of its arguments: no global state, safe
 * to call from any thread.
 */
#ifndef AVT_DAEMON_CANON_H
#define AVT_DAEMON_CANON_H

#include <stddef.h>

/* Values deeper than this below the top-level object (depth 0) are refused,
 * like rxon's to_dict() does: a value at depth 100 is signed, one at depth
 * 101 is an error, except a null object member (it is removed first). */
#define CANON_DEPTH_MAX 100

/* Longer inputs are refused (offsets are kept in 32 bits). Callers bound
 * their bodies far below this. */
#define CANON_LEN_MAX ((size_t)1 << 30)

/*
 * Canonicalize the JSON text in[0..len) (UTF-8, no NUL needed; the top level
 * must be an object). ignore_top is a NULL-terminated list of top-level
 * member names dropped in addition to "security" (NULL: none).
 *
 * The parser is strict where orjson is strict: invalid UTF-8, a lone
 * surrogate escape, a number that is infinite as a double, trailing content
 * or a BOM are errors. Duplicate keys keep their last value. Whitespace
 * between tokens is allowed.
 *
 * Returns 0 and sets *out to a NUL-terminated string the caller frees, and
 * *outlen to its length (outlen may be NULL). Returns -EINVAL with a reason
 * in err (errlen bytes, may be 0) when the text is not JSON, when it holds
 * something the orchestrator can never sign (an integer, or a double with an
 * integral value, outside [-2^63, 2^64-1]; nesting deeper than
 * CANON_DEPTH_MAX), or when it is longer than CANON_LEN_MAX. *out is NULL
 * then.
 *
 * One divergence, on the safe side: a value nested too deeply is refused
 * even when a later duplicate of its key replaces it (orjson would keep only
 * the replacement). jansson never writes duplicate keys.
 */
int canon_json(const char *in, size_t len, const char *const *ignore_top, char **out,
               size_t *outlen, char *err, size_t errlen);

/*
 * The canonical text of one value inside the JSON object in[0..len): path
 * is a NULL-terminated list of member names followed from the top level
 * (the last of duplicates, like orjson), e.g. {"security", "signature",
 * NULL}. Nothing is dropped from the value found (an empty path gives
 * canon_json(in, len, NULL)). The whole text is parsed with canon_json()'s
 * rules; range errors are raised only inside the value found.
 *
 * Returns 0 and the value's canonical text in *out as canon_json() does;
 * -ENOENT (with a reason in err) when a member on the path is missing, null,
 * or its parent is not an object; -EINVAL when the text is refused.
 */
int canon_lookup(const char *in, size_t len, const char *const *path, char **out, size_t *outlen,
                 char *err, size_t errlen);

/*
 * Quote the UTF-8 string s[0..len) as canon_json() writes strings: `"`, `\`
 * and the C0 controls escaped (\b \t \n \f \r, the rest as lowercase
 * \u00xx), everything else raw. Returns 0 and a malloc'd NUL-terminated
 * string in *out (length in *outlen, which may be NULL), or -EINVAL when s is
 * not valid UTF-8.
 */
int canon_quote(const char *s, size_t len, char **out, size_t *outlen, char *err, size_t errlen);

#endif /* AVT_DAEMON_CANON_H */
