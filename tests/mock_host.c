/* mock_host.c - placeholder; the fake host table for plugin unit tests lands with the plugins. */
#include "mock_host.h"
