/*
 * rxon_vectors.h - the RXON 1.0b14 signature vectors for the unit tests:
 * tests/data/rxon14/signature_vectors*.json, computed by the real rxon code
 * on the orchestrator's side (PROTOCOL-1.0b14.md 2.4). Files are found
 * under $AVT_SRCDIR (default: the current directory, which tests/run.sh sets
 * to the repository root).
 */
#ifndef AVT_TESTS_RXON_VECTORS_H
#define AVT_TESTS_RXON_VECTORS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tap.h"

#define RXON_VECTORS_MAIN "signature_vectors.json"
#define RXON_VECTORS_EXTRA "signature_vectors_extra.json"
#define RXON_IGNORE_MAX 8

/* The "vectors" array of tests/data/rxon14/<file> (a new reference the
 * caller releases with json_decref), or NULL with the reason printed. */
static inline json_t *rxon_vectors_load(const char *file)
{
    const char *src = getenv("AVT_SRCDIR");
    char path[4096];
    json_error_t jerr;

    snprintf(path, sizeof(path), "%s/tests/data/rxon14/%s", src != NULL ? src : ".", file);
    json_t *root = json_load_file(path, 0, &jerr);
    if (root == NULL) {
        printf("# cannot read %s: %s (line %d)\n", path, jerr.text, jerr.line);
        return NULL;
    }
    json_t *vectors = json_incref(json_object_get(root, "vectors"));
    json_decref(root);
    if (!json_is_array(vectors) || json_array_size(vectors) == 0) {
        printf("# %s has no \"vectors\" array\n", path);
        json_decref(vectors);
        return NULL;
    }
    return vectors;
}

static inline const char *rxon_str(const json_t *v, const char *key)
{
    return json_string_value(json_object_get(v, key));
}

/* The vector's ignore_fields as a NULL-terminated list into names (borrowed
 * from v); returns -1 when there are too many or one is not a string. */
static inline int rxon_ignore(const json_t *v, const char *names[RXON_IGNORE_MAX + 1])
{
    const json_t *arr = json_object_get(v, "ignore_fields");
    size_t i, n = json_array_size(arr);

    if (n > RXON_IGNORE_MAX)
        return -1;
    for (i = 0; i < n; i++) {
        names[i] = json_string_value(json_array_get(arr, i));
        if (names[i] == NULL)
            return -1;
    }
    names[n] = NULL;
    return 0;
}

/* Lowercase hex of s[0..n) into a malloc'd string. */
static inline char *rxon_hex(const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *h = malloc(2 * n + 1);
    if (h == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        h[2 * i] = hex[(unsigned char)s[i] >> 4];
        h[2 * i + 1] = hex[(unsigned char)s[i] & 15];
    }
    h[2 * n] = '\0';
    return h;
}

/* Every vector of `file` through check (1 = it passed): all must pass, and
 * there must be want_count of them; "# file: n of m vectors <what>". */
static inline void rxon_vectors_check(const char *file, size_t want_count,
                                      int (*check)(const json_t *v), const char *what)
{
    json_t *vectors = rxon_vectors_load(file), *v;
    size_t i, passed = 0;

    if (vectors == NULL) {
        TAP_FAIL_("no vectors in %s", file);
        return;
    }
    json_array_foreach(vectors, i, v)
    {
        passed += (size_t)check(v);
    }
    EXPECT_EQ_INT(json_array_size(vectors), want_count);
    EXPECT_EQ_INT(passed, json_array_size(vectors));
    printf("# %s: %zu of %zu vectors %s\n", file, passed, json_array_size(vectors), what);
    json_decref(vectors);
}

#endif /* AVT_TESTS_RXON_VECTORS_H */
