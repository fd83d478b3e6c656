/*
 * skill.c - a task type's SkillInfo (skill.h). The JSON texts a plugin
 * gives are parsed here, once, at load time: a plugin whose description
 * is broken is refused with the reason instead of failing every
 * registration later.
 */
#include "skill.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

/* A JSON object from a plugin's text into obj[key]; 0 when absent, -EINVAL
 * (err set) when it is not valid JSON or not an object. */
static int add_object(json_t *obj, const char *key, const char *text, char *err, size_t errlen)
{
    json_error_t je;
    if (text == NULL)
        return 0;
    json_t *v = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (v == NULL)
        return fmt_err(err, errlen, "%s is not valid JSON: %s (line %d, column %d)", key, je.text,
                       je.line, je.column);
    if (!json_is_object(v)) {
        json_decref(v);
        return fmt_err(err, errlen, "%s must be a JSON object", key);
    }
    json_object_set_new(obj, key, v);
    return 0;
}

/* events_schema: every member is an event type's schema, an object. */
static int check_events(json_t *obj, char *err, size_t errlen)
{
    const char *name;
    json_t *v;
    json_object_foreach(json_object_get(obj, "events_schema"), name, v)
    {
        if (!json_is_object(v))
            return fmt_err(err, errlen, "events_schema: the schema of \"%s\" must be an object",
                           name);
    }
    return 0;
}

static int add_statuses(json_t *obj, const char *const *st, char *err, size_t errlen)
{
    if (st == NULL)
        return 0;
    json_t *a = json_array();
    json_object_set_new(obj, "output_statuses", a);
    for (size_t i = 0; st[i] != NULL; i++) {
        json_t *v = st[i][0] != '\0' ? json_string(st[i]) : NULL;
        if (v == NULL)
            return fmt_err(err, errlen, "output_statuses[%zu] is empty or not UTF-8", i);
        json_array_append_new(a, v);
    }
    return 0;
}

json_t *skill_describe(const char *type, const char *plugin_version, const struct avt_skill *s,
                       char *err, size_t errlen)
{
    const char *version = s != NULL && s->version != NULL ? s->version : plugin_version;
    json_t *obj = json_pack("{s:s, s:s, s:s*}", "name", type, "type", type, "version", version);
    if (obj == NULL) {
        fmt_err(err, errlen, "the type or the version is not valid UTF-8");
        return NULL;
    }
    if (s == NULL)
        return obj;
    if (s->description != NULL &&
        json_object_set_new(obj, "description", json_string(s->description)) < 0) {
        fmt_err(err, errlen, "description is not valid UTF-8");
        json_decref(obj);
        return NULL;
    }
    if (add_object(obj, "input_schema", s->input_schema, err, errlen) < 0 ||
        add_object(obj, "output_schema", s->output_schema, err, errlen) < 0 ||
        add_object(obj, "events_schema", s->events_schema, err, errlen) < 0 ||
        check_events(obj, err, errlen) < 0 ||
        add_statuses(obj, s->output_statuses, err, errlen) < 0 ||
        add_object(obj, "properties", s->properties, err, errlen) < 0) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}
