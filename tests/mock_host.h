/* mock_host.h - placeholder; see mock_host.c. */
#ifndef AVT_TESTS_MOCK_HOST_H
#define AVT_TESTS_MOCK_HOST_H
#include "avt_plugin.h"
#endif
