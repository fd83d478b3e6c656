/* bad_no_handler.c - a descriptor without handle(). */
#include "avt_plugin.h"

static const char *const types[] = {"no_handler_type", NULL};
AVT_PLUGIN(.name = "bad_no_handler", .version = "1", .task_types = types);
