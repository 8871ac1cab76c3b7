//! `GET /openapi.json` against the real server: every answer the server gives
//! here, on every documented route (successes and errors), must validate
//! against the schema the description gives for that route and status, with
//! every object closed (`additionalProperties: false`), so an undocumented
//! field, a missing required one (fields always sent, null or not, are
//! required) or a wrong type fails; the requests sent must validate against
//! the request schemas as published; and the description lists exactly the
//! routes below (keep the list in step with `server::router`).

use crate::common;

use common::Server;
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::Method;
use serde_json::{json, Value};

const TOKEN: &str = "openapi-token-0123456789";

/// Closes every object schema that does not say otherwise, so that fields an
/// answer has and the description lacks are errors.
fn close_objects(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            m.values_mut().for_each(close_objects);
        }
        Value::Array(a) => a.iter_mut().for_each(close_objects),
        _ => {}
    }
}

struct Doc(Value);

impl Doc {
    /// A schema that resolves `#/components/...` against the description,
    /// as published.
    fn schema(&self, schema: &Value) -> Value {
        json!({"allOf": [schema], "components": self.0["components"]})
    }

    /// [`Doc::schema`] with every object closed.
    fn closed(&self, schema: &Value) -> Value {
        let mut s = self.schema(schema);
        close_objects(&mut s);
        s
    }

    fn operation(&self, method: &Method, path: &str) -> &Value {
        let op = &self.0["paths"][path][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not in /openapi.json");
        op
    }

    /// Checks an answer against the description of `method path` for its status.
    fn check_answer(&self, method: &Method, path: &str, status: u16, body: &Value) {
        let op = self.operation(method, path);
        let resp = &op["responses"][status.to_string()];
        assert!(resp.is_object(), "{method} {path} answered {status}, which /openapi.json does not list: {body}");
        let schema = &resp["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{method} {path} {status}: no JSON schema in /openapi.json");
        validate(&self.closed(schema), body, &format!("answer of {method} {path} ({status})"));
    }

    /// The request body schema of `method path`, as published (an unknown
    /// field must be refused by the description itself).
    fn request_schema(&self, method: &Method, path: &str) -> Value {
        let schema = &self.operation(method, path)["requestBody"]["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{method} {path}: no request schema");
        self.schema(schema)
    }
}

fn validate(schema: &Value, instance: &Value, what: &str) {
    let errors = common::schema::errors(schema, instance);
    assert!(errors.is_empty(), "{what} does not match /openapi.json:\n  {}\nanswer: {instance}", errors.join("\n  "));
}

fn is_valid(schema: &Value, instance: &Value) -> bool {
    common::schema::is_valid(schema, instance)
}

/// Sends a request, checks its answer against the description, returns it.
fn call(
    doc: &Doc,
    c: &Client,
    s: &Server,
    method: Method,
    path: &str,
    template: &str,
    req: impl FnOnce(RequestBuilder) -> RequestBuilder,
) -> (u16, Value) {
    let r = req(c.request(method.clone(), s.at(path))).send().expect("request");
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap_or_else(|e| panic!("{method} {path}: the answer is not JSON: {e}"));
    doc.check_answer(&method, template, status, &body);
    (status, body)
}

#[test]
fn real_answers_match_the_openapi_description() {
    let root = common::demo_root("openapi-root");
    let a = root.0.join("a");
    let s = Server::start(&[
        "--model",
        a.to_str().unwrap(),
        "--model-root",
        root.0.to_str().unwrap(),
        "--admin-token",
        TOKEN,
    ]);
    let c = Client::new();
    let r = c.get(s.at("/openapi.json")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let doc = Doc(r.json().unwrap());
    assert!(doc.0["openapi"].as_str().unwrap().starts_with("3."), "{}", doc.0["openapi"]);

    // the description lists exactly the server's routes
    let documented: std::collections::BTreeSet<String> = doc.0["paths"].as_object().unwrap().keys().cloned().collect();
    let routes = [
        "/v1/recommend",
        "/v1/events",
        "/v1/intents",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/admin/models",
        "/admin/models/rollback",
        "/admin/items",
        "/admin/items/{id}",
        "/admin/catalog",
        "/admin/catalog/compact",
        "/admin/catalog/fold",
    ];
    assert_eq!(documented, routes.iter().map(|r| r.to_string()).collect(), "documented routes");

    // recommendation: the requests sent are valid by the description; a
    // request with a field it lacks is not
    let post = Method::POST;
    let rec = "/v1/recommend";
    let req_schema = doc.request_schema(&post, rec);
    let history = json!(["1", "2", 3]);
    let bodies = [
        json!({"history": history, "k": 5}),
        json!({"history": history, "k": 5, "strategy": "ann", "user_id": "u-1"}),
        json!({"history": ["1", "not-an-item"], "k": 3, "exclude_history": false, "timeout_ms": 2000}),
        json!({"profile": {"age": 30, "interests": ["tea", "running"], "country": "FR"}, "k": 4}),
        json!({"history": history, "k": 0}),
        json!({"history": history, "colour": "red"}),
    ];
    for b in &bodies[..4] {
        assert!(is_valid(&req_schema, b), "the description refuses a request the server serves: {b}");
    }
    assert!(!is_valid(&req_schema, &bodies[5]), "the description accepts an unknown field");
    let mut seen = Vec::new();
    for b in &bodies {
        let (st, v) = call(&doc, &c, &s, post.clone(), rec, rec, |r| r.json(b));
        seen.push((st, v));
    }
    assert_eq!(seen.iter().map(|(st, _)| *st).collect::<Vec<_>>(), [200, 200, 200, 200, 422, 422]);
    assert_eq!(seen[1].1["fallback"], "requested", "{}", seen[1].1);
    assert_eq!(seen[1].1["items"][0]["source"], "ann");
    assert_eq!(seen[2].1["ignored_history"], json!(["not-an-item"]));
    assert!(seen[3].1["inferred_intents"].is_array(), "cold start answer: {}", seen[3].1);
    let (st, _) =
        call(&doc, &c, &s, post.clone(), rec, rec, |r| r.header("content-type", "application/json").body("{\"k\": "));
    assert_eq!(st, 400);

    // the other public routes
    let get = Method::GET;
    for path in ["/v1/intents", "/healthz", "/readyz"] {
        let (st, _) = call(&doc, &c, &s, get.clone(), path, path, |r| r);
        assert_eq!(st, 200, "{path}");
    }
    let m = c.get(s.at("/metrics")).send().unwrap();
    assert_eq!(m.status().as_u16(), 200);
    assert!(doc.operation(&get, "/metrics")["responses"]["200"]["content"]["text/plain"].is_object());

    // admin routes, with and without the token
    let bearer = |r: RequestBuilder| r.bearer_auth(TOKEN);
    let (st, _) = call(&doc, &c, &s, get.clone(), "/admin/models", "/admin/models", |r| r.bearer_auth("wrong"));
    assert_eq!(st, 401);
    let (st, _) = call(&doc, &c, &s, get.clone(), "/admin/models", "/admin/models", bearer);
    assert_eq!(st, 200);
    let (st, _) = call(&doc, &c, &s, post.clone(), "/admin/models/rollback", "/admin/models/rollback", bearer);
    assert_eq!(st, 409);
    let load = json!({"path": "a"});
    assert!(is_valid(&doc.request_schema(&post, "/admin/models"), &load));
    let (st, v) =
        call(&doc, &c, &s, post.clone(), "/admin/models", "/admin/models", |r| r.bearer_auth(TOKEN).json(&load));
    assert_eq!(st, 200, "{v}");
    let (st, _) = call(&doc, &c, &s, post.clone(), "/admin/models", "/admin/models", |r| {
        r.bearer_auth(TOKEN).json(&json!({"path": "/etc"}))
    });
    assert_eq!(st, 403);
    let (st, _) = call(&doc, &c, &s, post.clone(), "/admin/models/rollback", "/admin/models/rollback", bearer);
    assert_eq!(st, 200);

    let items = "/admin/items";
    let item = json!({"id": "new-1", "title": "a new item", "embedding": vec![0.5f32; 384]});
    assert!(is_valid(&doc.request_schema(&post, items), &item));
    let (st, _) = call(&doc, &c, &s, post.clone(), items, items, |r| r.bearer_auth(TOKEN).json(&item));
    assert_eq!(st, 201);
    let (st, _) = call(&doc, &c, &s, post.clone(), items, items, |r| r.bearer_auth(TOKEN).json(&item));
    assert_eq!(st, 200);
    let ndjson = format!(
        "{}\n{{\"id\": \"bad\", \"embedding\": [1.0]}}\n",
        json!({"id": "new-2", "embedding": vec![0.25f32; 384]})
    );
    let (st, v) = call(&doc, &c, &s, post.clone(), items, items, |r| {
        r.bearer_auth(TOKEN).header("content-type", "application/x-ndjson").body(ndjson)
    });
    assert_eq!((st, &v["applied"], v["errors"][0]["line"].as_u64()), (200, &json!(1), Some(2)), "{v}");
    let (st, _) = call(&doc, &c, &s, post.clone(), items, items, |r| {
        r.bearer_auth(TOKEN).json(&json!({"id": "x", "embedding": [1.0]}))
    });
    assert_eq!(st, 422);
    let one = "/admin/items/{id}";
    let expiring = json!({"id": "new-3", "embedding": vec![0.3f32; 384], "ttl_s": 600, "title": "t"});
    assert!(is_valid(&doc.request_schema(&post, items), &expiring));
    let (st, _) = call(&doc, &c, &s, post.clone(), items, items, |r| r.bearer_auth(TOKEN).json(&expiring));
    assert_eq!(st, 201);
    let (st, v) = call(&doc, &c, &s, get.clone(), "/admin/items/new-3", one, bearer);
    assert!(st == 200 && v["expires_at"].is_string(), "{v}");
    let events = "/v1/events";
    let lines = "{\"item_id\": \"new-3\", \"kind\": \"click\"}\n{\"item_id\": \"nope\", \"kind\": \"click\"}\n";
    let (st, v) = call(&doc, &c, &s, post.clone(), events, events, |r| {
        r.header("content-type", "application/x-ndjson").body(lines)
    });
    assert_eq!((st, &v["applied"], v["errors"][0]["field"].as_str()), (200, &json!(1), Some("item_id")), "{v}");
    let (st, v) = call(&doc, &c, &s, get.clone(), "/admin/items/new-1", one, bearer);
    assert_eq!((st, &v["served"]), (200, &json!(true)), "{v}");
    let (st, _) = call(&doc, &c, &s, Method::DELETE, "/admin/items/new-1", one, bearer);
    assert_eq!(st, 200);
    let (st, _) = call(&doc, &c, &s, get.clone(), "/admin/items/never-seen", one, bearer);
    assert_eq!(st, 404);
    let (st, _) = call(&doc, &c, &s, Method::DELETE, "/admin/items/never-seen", one, bearer);
    assert_eq!(st, 404);
    let (st, v) = call(&doc, &c, &s, get.clone(), "/admin/catalog", "/admin/catalog", bearer);
    assert_eq!((st, v["durable"].as_bool()), (200, Some(true)), "{v}");
    let (st, v) = call(&doc, &c, &s, post.clone(), "/admin/catalog/fold", "/admin/catalog/fold", bearer);
    assert_eq!((st, v["segments"].as_u64()), (200, Some(1)), "{v}");
    let (st, v) = call(&doc, &c, &s, get.clone(), "/admin/catalog", "/admin/catalog", bearer);
    assert_eq!((st, v["segments"].as_array().map(Vec::len)), (200, Some(1)), "{v}");
    let (st, _) = call(&doc, &c, &s, post.clone(), "/admin/catalog/compact", "/admin/catalog/compact", bearer);
    assert_eq!(st, 200);

    // an unknown route is not described and answers 404
    let r = c.get(s.at("/v1/nothing")).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // without a token the admin API is off: 404, as described
    drop(s);
    let off = Server::start(&["--model", a.to_str().unwrap()]);
    for (method, path) in [(get.clone(), "/admin/models"), (get, "/admin/catalog"), (post, "/admin/catalog/compact")] {
        let (st, _) = call(&doc, &c, &off, method, path, path, bearer);
        assert_eq!(st, 404, "{path}");
    }
}

/// The validator refuses what each keyword forbids (a validator that
/// accepts everything would make tests/openapi.rs pass for nothing).
#[test]
fn the_schema_checker_refuses_what_each_keyword_forbids() {
    let doc = json!({
        "allOf": [{"$ref": "#/components/schemas/A"}],
        "components": {"schemas": {
            "A": {"type": "object", "required": ["n"], "additionalProperties": false, "properties": {
                "n": {"type": "integer", "minimum": 1, "maximum": 9},
                "s": {"type": ["string", "null"], "minLength": 2, "maxLength": 3},
                "e": {"enum": ["x", "y"]},
                "l": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
                "o": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                "m": {"type": "object", "propertyNames": {"minLength": 2}, "additionalProperties": {"type": "number"}}
            }}
        }}
    });
    let good = json!({"n": 3, "s": null, "e": "y", "l": [true], "o": "a", "m": {"ab": 1.5}});
    assert!(common::schema::errors(&doc, &good).is_empty(), "{:?}", common::schema::errors(&doc, &good));
    for bad in [
        json!({"s": "ab"}),
        json!({"n": 0}),
        json!({"n": 10}),
        json!({"n": 1.5}),
        json!({"n": "1"}),
        json!({"n": 1, "s": "a"}),
        json!({"n": 1, "s": "abcd"}),
        json!({"n": 1, "e": "z"}),
        json!({"n": 1, "l": [1]}),
        json!({"n": 1, "l": [true, true, true]}),
        json!({"n": 1, "o": true}),
        json!({"n": 1, "m": {"a": 1}}),
        json!({"n": 1, "m": {"ab": "1"}}),
        json!({"n": 1, "extra": 1}),
        json!([1]),
    ] {
        assert!(!common::schema::is_valid(&doc, &bad), "{bad} passed");
    }
}

#[test]
#[should_panic(expected = "does not check")]
fn the_schema_checker_does_not_pass_over_an_unknown_keyword() {
    is_valid(&json!({"pattern": "^a"}), &json!("b"));
}
