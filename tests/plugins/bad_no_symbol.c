/* bad_no_symbol.c - a shared object without the avt_plugin symbol. */
#include "avt_plugin.h"

AVT__EXPORT int not_a_plugin(void);

int not_a_plugin(void)
{
    return 42;
}
