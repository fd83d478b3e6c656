/*
 * skill.h - what a task type advertises to the orchestrator (RXON 1.0b14's
 * SkillInfo, PROTOCOL-1.0b14.md 3.1), built once when a plugin is loaded
 * from its optional struct avt_skill (ABI 1.1). Old plugins, and types
 * without an entry, get the type's name and the plugin's version.
 */
#ifndef AVT_DAEMON_SKILL_H
#define AVT_DAEMON_SKILL_H

#include <stddef.h>

#include <jansson.h>

#include "avt_plugin.h"

/*
 * The SkillInfo object of `type` (new reference): name and type (both the
 * task type), version (the entry's, else plugin_version), and what the
 * entry describes. s may be NULL. Returns NULL with the reason in err when
 * a JSON text of the entry is not valid JSON of the right kind (the
 * schemas and properties objects, events_schema an object of objects) or
 * an output status is empty.
 */
json_t *skill_describe(const char *type, const char *plugin_version, const struct avt_skill *s,
                       char *err, size_t errlen);

#endif /* AVT_DAEMON_SKILL_H */
