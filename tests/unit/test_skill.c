/*
 * test_skill.c - a task type's SkillInfo (skill.h): without a description
 * the type's name and the plugin's version; with one, every field parsed
 * from the plugin's JSON texts into objects; broken texts refused at load
 * time with a reason that names the field (invalid JSON with its line and
 * column, a schema that is not an object, an event schema that is not an
 * object, an empty output status, text that is not UTF-8).
 */
#include <string.h>

#include "skill.h"
#include "tap.h"

TEST(without_a_description_name_and_plugin_version)
{
    char err[256] = "";
    json_t *o = skill_describe("resize", "1.4.0", NULL, err, sizeof(err));
    ASSERT(o != NULL);
    EXPECT_EQ_INT(json_object_size(o), 3);
    EXPECT_EQ_STR(json_string_value(json_object_get(o, "name")), "resize");
    EXPECT_EQ_STR(json_string_value(json_object_get(o, "type")), "resize");
    EXPECT_EQ_STR(json_string_value(json_object_get(o, "version")), "1.4.0");
    json_decref(o);
}

TEST(a_full_description)
{
    static const char *const statuses[] = {"needs_review", "too_dark", NULL};
    const struct avt_skill s = {
        .type = "resize",
        .version = "2.0",
        .description = "Scales an image",
        .input_schema = "{\"type\": \"object\", \"required\": [\"width\"]}",
        .output_schema = "{\"type\": \"object\"}",
        .events_schema = "{\"tile_done\": {\"type\": \"object\"}}",
        .output_statuses = statuses,
        .properties = "{\"gpu\": true}",
    };
    char err[256] = "";
    json_t *o = skill_describe("resize", "1.4.0", &s, err, sizeof(err));
    ASSERT(o != NULL);
    EXPECT_EQ_STR(json_string_value(json_object_get(o, "version")), "2.0");
    EXPECT_EQ_STR(json_string_value(json_object_get(o, "description")), "Scales an image");
    json_t *in = json_object_get(o, "input_schema");
    EXPECT(json_is_object(in));
    EXPECT_EQ_STR(json_string_value(json_array_get(json_object_get(in, "required"), 0)), "width");
    EXPECT(json_is_object(json_object_get(json_object_get(o, "events_schema"), "tile_done")));
    json_t *st = json_object_get(o, "output_statuses");
    EXPECT_EQ_INT(json_array_size(st), 2);
    EXPECT_EQ_STR(json_string_value(json_array_get(st, 1)), "too_dark");
    EXPECT(json_is_true(json_object_get(json_object_get(o, "properties"), "gpu")));
    EXPECT_EQ_STR(err, "");
    json_decref(o);
}

TEST(the_version_falls_back_to_the_plugin)
{
    const struct avt_skill s = {.type = "t", .description = "d"};
    char err[256];
    json_t *o = skill_describe("t", "0.9", &s, err, sizeof(err));
    ASSERT(o != NULL);
    EXPECT_EQ_STR(json_string_value(json_object_get(o, "version")), "0.9");
    EXPECT(json_object_get(o, "input_schema") == NULL);
    json_decref(o);
}

static void refused(const struct avt_skill *s, const char *why)
{
    char err[256] = "";
    json_t *o = skill_describe("t", "1", s, err, sizeof(err));
    EXPECT(o == NULL);
    EXPECT_CONTAINS(err, why);
    json_decref(o);
}

TEST(broken_descriptions_are_refused_with_the_field)
{
    refused(&(struct avt_skill){.input_schema = "{\"type\": "}, "input_schema is not valid JSON");
    refused(&(struct avt_skill){.input_schema = "{\"a\": 1,\n \"a\": 2}"}, "line 2");
    refused(&(struct avt_skill){.output_schema = "[1, 2]"}, "output_schema must be a JSON object");
    refused(&(struct avt_skill){.properties = "[\"gpu\"]"}, "properties must be a JSON object");
    refused(&(struct avt_skill){.events_schema = "{\"ok\": {}, \"bad\": 3}"},
            "the schema of \"bad\" must be an object");
    static const char *const empty[] = {"fine", "", NULL};
    refused(&(struct avt_skill){.output_statuses = empty}, "output_statuses[1] is empty");
    refused(&(struct avt_skill){.description = "caf\xe9"}, "description is not valid UTF-8");
    char err[256] = "";
    EXPECT(skill_describe("t\xff", "1", NULL, err, sizeof(err)) == NULL);
    EXPECT_CONTAINS(err, "not valid UTF-8");
}

TAP_MAIN()
