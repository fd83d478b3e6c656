/* bad_tiny_symbol.c - exports a 4-byte object named avt_plugin: reading a
 * descriptor from it would run past its end. */
#include "avt_plugin.h"

AVT__EXPORT const uint32_t avt_plugin = AVT_ABI_VERSION;
