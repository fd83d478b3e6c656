/*
 * tap.h - a tiny unit-test harness printing TAP. Each TEST() registers
 * itself; main() is TAP_MAIN(). The binary exits non-zero when a check
 * failed. Checks never abort the test binary: a failed EXPECT marks the test
 * and goes on; a failed ASSERT returns from the test function.
 */
#ifndef AVT_TESTS_TAP_H
#define AVT_TESTS_TAP_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tap_test {
    const char *name;
    void (*fn)(void);
};

#define TAP_MAX_TESTS 256
static struct tap_test tap_tests[TAP_MAX_TESTS];
static int tap_ntests;
static int tap_failed_current;

#define TEST(name)                                                                                 \
    static void test_##name(void);                                                                 \
    __attribute__((constructor)) static void tap_register_##name(void)                             \
    {                                                                                              \
        if (tap_ntests < TAP_MAX_TESTS)                                                            \
            tap_tests[tap_ntests++] = (struct tap_test){#name, test_##name};                       \
    }                                                                                              \
    static void test_##name(void)

#define TAP_FAIL_(...)                                                                             \
    do {                                                                                           \
        printf("#   %s:%d: ", __FILE__, __LINE__);                                                 \
        printf(__VA_ARGS__);                                                                       \
        printf("\n");                                                                              \
        tap_failed_current = 1;                                                                    \
    } while (0)

#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond))                                                                               \
            TAP_FAIL_("expected %s", #cond);                                                       \
    } while (0)

#define ASSERT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            TAP_FAIL_("assertion %s", #cond);                                                      \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define EXPECT_EQ_INT(a, b)                                                                        \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_)                                                                              \
            TAP_FAIL_("%s == %s: %lld != %lld", #a, #b, a_, b_);                                   \
    } while (0)

#define EXPECT_EQ_STR(a, b)                                                                        \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0)                                       \
            TAP_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)",                    \
                      b_ ? b_ : "(null)");                                                         \
    } while (0)

#define EXPECT_CONTAINS(hay, needle)                                                               \
    do {                                                                                           \
        const char *h_ = (hay), *n_ = (needle);                                                    \
        if (h_ == NULL || strstr(h_, n_) == NULL)                                                  \
            TAP_FAIL_("\"%s\" contains \"%s\"", h_ ? h_ : "(null)", n_);                           \
    } while (0)

#define TAP_MAIN()                                                                                 \
    int main(void)                                                                                 \
    {                                                                                              \
        int failed = 0;                                                                            \
        setvbuf(stdout, NULL, _IONBF, 0);                                                          \
        printf("1..%d\n", tap_ntests);                                                             \
        for (int i = 0; i < tap_ntests; i++) {                                                     \
            tap_failed_current = 0;                                                                \
            tap_tests[i].fn();                                                                     \
            printf("%sok %d - %s\n", tap_failed_current ? "not " : "", i + 1, tap_tests[i].name);  \
            failed += tap_failed_current;                                                          \
        }                                                                                          \
        return failed ? 1 : 0;                                                                     \
    }

#endif /* AVT_TESTS_TAP_H */
