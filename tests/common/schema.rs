//! A JSON Schema (2020-12) validator for the keywords `GET /openapi.json`
//! uses (`tests/openapi.rs`): `$ref` into the same document, `allOf`,
//! `anyOf`, `oneOf`, `not`, `type` (one or several), `enum`, `const`,
//! `properties`, `required`, `additionalProperties`, `propertyNames`,
//! `items`, `minItems`, `maxItems`, `minimum`, `maximum`,
//! `exclusiveMinimum`, `exclusiveMaximum`, `minLength`, `maxLength`;
//! annotations (`description`, `format`, `default`, ...) are not checked, as
//! validators do by default. A keyword outside these panics, so a schema can
//! never pass because its constraint was not understood.

use serde_json::Value;

/// Keywords that only describe (no constraint).
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "format",
    "default",
    "example",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$schema",
    "$comment",
    "components",
];

/// What `instance` breaks of `schema` (empty: valid). `$ref`s are resolved
/// against `schema` itself (the document holds `components`).
pub fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, schema, instance, "", &mut out);
    out
}

pub fn is_valid(schema: &Value, instance: &Value) -> bool {
    errors(schema, instance).is_empty()
}

fn type_matches(name: &str, v: &Value) -> bool {
    match name {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        // 2020-12: a number with no fractional part is an integer (1.0 too)
        "integer" => v.as_f64().is_some_and(|f| f.fract() == 0.0),
        other => panic!("unknown JSON Schema type {other:?}"),
    }
}

fn number(v: &Value, keyword: &str) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{keyword} must be a number, not {v}"))
}

fn check(root: &Value, schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    let obj = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => return out.push(format!("{at}: no value is allowed here")),
        Value::Object(o) => o,
        other => panic!("a schema must be an object or a boolean, not {other}"),
    };
    let mut fail = |why: String| out.push(format!("{at}: {why}"));
    let mut sub = Vec::new();
    for (k, s) in obj {
        match k.as_str() {
            "$ref" => {
                let r = s.as_str().expect("$ref is a string");
                let target = r
                    .strip_prefix('#')
                    .and_then(|p| root.pointer(p))
                    .unwrap_or_else(|| panic!("$ref {r} does not resolve"));
                check(root, target, v, at, &mut sub);
            }
            "allOf" => s.as_array().expect("allOf is an array").iter().for_each(|s| check(root, s, v, at, &mut sub)),
            "anyOf" | "oneOf" => {
                let matching =
                    s.as_array().expect("anyOf/oneOf is an array").iter().filter(|s| is_valid_at(root, s, v)).count();
                if matching == 0 || (k == "oneOf" && matching > 1) {
                    fail(format!("{v} matches {matching} of the {k} schemas"));
                }
            }
            "not" if is_valid_at(root, s, v) => fail(format!("{v} matches a schema it must not")),
            "not" => {}
            "type" => {
                let names: Vec<&str> = match s {
                    Value::String(n) => vec![n.as_str()],
                    Value::Array(a) => a.iter().map(|n| n.as_str().expect("type names are strings")).collect(),
                    other => panic!("type must be a string or an array, not {other}"),
                };
                if !names.iter().any(|n| type_matches(n, v)) {
                    fail(format!("{v} is not of type {}", names.join(" or ")));
                }
            }
            "enum" if !s.as_array().expect("enum is an array").contains(v) => fail(format!("{v} is not one of {s}")),
            "enum" => {}
            "const" if s != v => fail(format!("{v} is not {s}")),
            "const" => {}
            "properties" => {
                if let Some(o) = v.as_object() {
                    for (name, ps) in s.as_object().expect("properties is an object") {
                        if let Some(x) = o.get(name) {
                            check(root, ps, x, &format!("{at}/{name}"), &mut sub);
                        }
                    }
                }
            }
            "required" => {
                if let Some(o) = v.as_object() {
                    for name in s.as_array().expect("required is an array") {
                        let name = name.as_str().expect("required names are strings");
                        if !o.contains_key(name) {
                            fail(format!("the required field {name:?} is missing"));
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(o) = v.as_object() {
                    let known = obj.get("properties").and_then(Value::as_object);
                    for (name, x) in o.iter().filter(|(n, _)| !known.is_some_and(|p| p.contains_key(*n))) {
                        let mut e = Vec::new();
                        check(root, s, x, &format!("{at}/{name}"), &mut e);
                        if !e.is_empty() && s == &Value::Bool(false) {
                            fail(format!("{name:?} is not a field the description has"));
                        } else {
                            sub.extend(e);
                        }
                    }
                }
            }
            "propertyNames" => {
                if let Some(o) = v.as_object() {
                    for name in o.keys() {
                        check(root, s, &Value::String(name.clone()), &format!("{at} (field name {name:?})"), &mut sub);
                    }
                }
            }
            "items" => {
                if let Some(a) = v.as_array() {
                    for (i, x) in a.iter().enumerate() {
                        check(root, s, x, &format!("{at}/{i}"), &mut sub);
                    }
                }
            }
            "minItems" | "maxItems" => {
                if let Some(a) = v.as_array() {
                    let n = s.as_u64().expect("minItems/maxItems is a count") as usize;
                    if (k == "minItems" && a.len() < n) || (k == "maxItems" && a.len() > n) {
                        fail(format!("{} items, {k} is {n}", a.len()));
                    }
                }
            }
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
                if let Some(x) = v.as_f64() {
                    let b = number(s, k);
                    let ok = match k.as_str() {
                        "minimum" => x >= b,
                        "maximum" => x <= b,
                        "exclusiveMinimum" => x > b,
                        _ => x < b,
                    };
                    if !ok {
                        fail(format!("{v} breaks {k} {b}"));
                    }
                }
            }
            "minLength" | "maxLength" => {
                if let Some(text) = v.as_str() {
                    let (n, len) = (s.as_u64().expect("minLength/maxLength is a count") as usize, text.chars().count());
                    if (k == "minLength" && len < n) || (k == "maxLength" && len > n) {
                        fail(format!("{len} characters, {k} is {n}"));
                    }
                }
            }
            a if ANNOTATIONS.contains(&a) => {}
            other => panic!("the schema uses {other:?}, which tests/common/schema.rs does not check: add it there"),
        }
    }
    out.extend(sub);
}

fn is_valid_at(root: &Value, schema: &Value, v: &Value) -> bool {
    let mut e = Vec::new();
    check(root, schema, v, "", &mut e);
    e.is_empty()
}
