/* bad_func_symbol.c - exports a function, not a descriptor, named avt_plugin. */
#include "avt_plugin.h"

AVT__EXPORT int avt_plugin(void);

int avt_plugin(void)
{
    return 0;
}
