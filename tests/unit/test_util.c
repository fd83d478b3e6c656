/*
 * test_util.c - round_away() (util.h), the daemon's replacement for libm's
 * round(): halves go away from zero, exact below and above a half, zero is
 * +0, and what is already an integer (|x| >= 2^52), NaN and the infinities
 * come back unchanged.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tap.h"
#include "util.h"

static int same_bits(double a, double b)
{
    return memcmp(&a, &b, sizeof(a)) == 0;
}

TEST(halves_go_away_from_zero)
{
    EXPECT(same_bits(round_away(0.5), 1.0));
    EXPECT(same_bits(round_away(1.5), 2.0));
    EXPECT(same_bits(round_away(2.5), 3.0));
    EXPECT(same_bits(round_away(-0.5), -1.0));
    EXPECT(same_bits(round_away(-2.5), -3.0));
}

TEST(below_and_above_a_half)
{
    EXPECT(same_bits(round_away(0.49999999999999994), 0.0)); /* the largest double below 0.5 */
    EXPECT(same_bits(round_away(1.4999999999999998), 1.0));
    EXPECT(same_bits(round_away(1.5000000000000002), 2.0));
    EXPECT(same_bits(round_away(-1.4999999999999998), -1.0));
    EXPECT(same_bits(round_away(167.49999999999997), 167.0));
    EXPECT(same_bits(round_away(4503599627370495.5), 4503599627370496.0)); /* 2^52 - 0.5 */
}

TEST(what_the_heartbeat_and_progress_round)
{
    /* usage.c: CPU to one decimal, RAM to two; rxon_b14.c: progress to four. */
    EXPECT(same_bits(round_away(16.666666666666668 * 10.0) / 10.0, 16.7));
    EXPECT(same_bits(round_away(3.995 * 100.0) / 100.0, 4.0));
    EXPECT(same_bits(round_away(33.33333 * 100.0) / 10000.0, 0.3333));
}

TEST(zero_is_positive)
{
    EXPECT(same_bits(round_away(-0.0), 0.0));
    EXPECT(same_bits(round_away(-0.3), 0.0));
    EXPECT(same_bits(round_away(0.3), 0.0));
}

TEST(integers_nan_and_infinities_unchanged)
{
    EXPECT(same_bits(round_away(4503599627370496.0), 4503599627370496.0));
    EXPECT(same_bits(round_away(-9007199254740993.0), -9007199254740993.0));
    EXPECT(same_bits(round_away(1e300), 1e300));
    EXPECT(same_bits(round_away(INFINITY), INFINITY));
    EXPECT(same_bits(round_away(-INFINITY), -INFINITY));
    EXPECT(isnan(round_away(NAN)));
    EXPECT(same_bits(round_away(7.0), 7.0));
    EXPECT(same_bits(round_away(-7.0), -7.0));
}

TAP_MAIN()
