//! The catalog at scale, end to end through the binary: indexing JSON Lines
//! items with F16 embeddings and imported semantic IDs, bad input named by
//! line, the batch endpoint, item read-back, an acknowledged item generated
//! by the very next request, compaction (online and offline), a second
//! server on a held folder serving read-only, and no
//! acknowledged edit lost when the server is killed with SIGKILL mid-stream.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fails, ok, vector, Server, TempDir};
use serde_json::{json, Value};

const TOKEN: &str = "catalog-token-0123456789";

/// Writes a safetensors file of one tensor `embeddings` (F16 when `half`).
fn write_embeddings(path: &Path, rows: &[Vec<f32>], half: bool) {
    let (n, dim) = (rows.len(), rows.first().map_or(0, Vec::len));
    let width = if half { 2 } else { 4 };
    let dtype = if half { "F16" } else { "F32" };
    let mut header =
        format!(r#"{{"embeddings":{{"dtype":"{dtype}","shape":[{n},{dim}],"data_offsets":[0,{}]}}}}"#, n * dim * width);
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    for r in rows {
        for x in r {
            if half {
                f.write_all(&half::f16::from_f32(*x).to_le_bytes()).unwrap();
            } else {
                f.write_all(&x.to_le_bytes()).unwrap();
            }
        }
    }
}

fn write_items(path: &Path, n: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..n {
        writeln!(f, r#"{{"id": "it-{i}", "title": "item number {i}", "categories": ["group {}"]}}"#, i % 9).unwrap();
    }
}

#[test]
fn index_reads_jsonl_f16_and_imported_ids_and_names_bad_lines() {
    let tmp = TempDir::new("catalog-index");
    let p = |s: &str| tmp.0.join(s).to_string_lossy().into_owned();
    let (n, dim) = (10_000, 12);
    write_items(&tmp.0.join("items.jsonl"), n);
    let rows: Vec<Vec<f32>> = (0..n).map(|i| vector(i, dim)).collect();
    write_embeddings(&tmp.0.join("emb.safetensors"), &rows, true);

    let out = ok(&[
        "index",
        "--items",
        &p("items.jsonl"),
        "--embeddings",
        &p("emb.safetensors"),
        "--out",
        &p("cat"),
        "--levels",
        "2",
        "--codebook-size",
        "16",
        "--max-group",
        "48",
        "--report",
        &p("report.json"),
    ]);
    assert!(out.contains("level 0: 16/16 codes used"), "{out}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(p("report.json")).unwrap()).unwrap();
    assert!(report["max_group"].as_u64().unwrap() <= 48, "{report}");
    let info: Value = serde_json::from_str(&ok(&["catalog", "info", &p("cat")])).unwrap();
    assert_eq!((info["rows"].as_u64(), info["version"].as_u64()), (Some(10_000), Some(1)), "{info}");

    // semantic IDs from elsewhere: two codes of 8 each, a collision code on top
    let mut f = std::fs::File::create(tmp.0.join("sids.jsonl")).unwrap();
    for i in 0..n {
        writeln!(f, r#"{{"id": "it-{i}", "sid": [{}, {}]}}"#, i % 8, (i / 8) % 8).unwrap();
    }
    drop(f);
    let out = ok(&[
        "index",
        "--items",
        &p("items.jsonl"),
        "--embeddings",
        &p("emb.safetensors"),
        "--sids",
        &p("sids.jsonl"),
        "--codebook-size",
        "8",
        "--out",
        &p("imported"),
    ]);
    assert!(out.contains("semantic IDs [8, 8, 157]"), "10,000 items over 64 prefixes: groups of 157: {out}");

    // bad input stops with the line or row named, and writes nothing
    let never = p("never");
    let bad_index = |items: &str, emb: &str, extra: &[&str]| {
        let mut args = vec!["index", "--items", items, "--embeddings", emb, "--out", &never, "--codebook-size", "8"];
        args.extend_from_slice(extra);
        let err = fails(&args);
        assert!(!Path::new(&never).exists(), "nothing half-written");
        err
    };
    write_embeddings(&tmp.0.join("short.safetensors"), &rows[..n - 1], false);
    let err = bad_index(&p("items.jsonl"), &p("short.safetensors"), &[]);
    assert!(err.contains("9999 rows for 10000 items"), "{err}");
    let mut nan = rows.clone();
    nan[12][3] = f32::NAN;
    write_embeddings(&tmp.0.join("nan.safetensors"), &nan, false);
    let err = bad_index(&p("items.jsonl"), &p("nan.safetensors"), &[]);
    assert!(err.contains("row 12"), "{err}");
    let lines: Vec<String> =
        std::fs::read_to_string(tmp.0.join("items.jsonl")).unwrap().lines().map(String::from).collect();
    let variant = |name: &str, line: usize, text: &[u8]| {
        let mut f = std::fs::File::create(tmp.0.join(name)).unwrap();
        for (i, l) in lines.iter().enumerate() {
            if i + 1 == line {
                f.write_all(text).unwrap();
                f.write_all(b"\n").unwrap();
            } else {
                writeln!(f, "{l}").unwrap();
            }
        }
        p(name)
    };
    let dup = variant("dup.jsonl", 7, br#"{"id": "it-2", "title": "again"}"#);
    let err = bad_index(&dup, &p("emb.safetensors"), &[]);
    assert!(err.contains("line 7") && err.contains("line 3"), "{err}");
    let bytes = variant("bytes.jsonl", 9, b"{\"id\": \"it-8\", \"title\": \"\xff\xfe\"}");
    let err = bad_index(&bytes, &p("emb.safetensors"), &[]);
    assert!(err.contains("line 9") && err.contains("UTF-8"), "{err}");
    let long_id = format!(r#"{{"id": "{}", "title": "x"}}"#, "x".repeat(600));
    let long = variant("long.jsonl", 4, long_id.as_bytes());
    let err = bad_index(&long, &p("emb.safetensors"), &[]);
    assert!(err.contains("line 4") && err.contains("at most 512"), "{err}");
    let sids =
        std::fs::read_to_string(tmp.0.join("sids.jsonl")).unwrap().replacen(r#""sid": [4, 0]"#, r#""sid": [4, 99]"#, 1);
    std::fs::write(tmp.0.join("bad-sids.jsonl"), sids).unwrap();
    let err = bad_index(&p("items.jsonl"), &p("emb.safetensors"), &["--sids", &p("bad-sids.jsonl")]);
    assert!(err.contains("line 5") && err.contains("code 99 exceeds"), "{err}");
    let leftovers: Vec<String> = std::fs::read_dir(&tmp.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn admin(
    c: &reqwest::blocking::Client,
    s: &Server,
    m: reqwest::Method,
    path: &str,
) -> reqwest::blocking::RequestBuilder {
    c.request(m, s.at(path)).bearer_auth(TOKEN)
}

fn json_of(r: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    let r = r.send().expect("request");
    let st = r.status().as_u16();
    (st, r.json().unwrap_or(Value::Null))
}

/// A vector of the demo catalog's dimension, different for every `i`.
fn demo_embedding(i: usize) -> Vec<f32> {
    vector(i, 384)
}

#[test]
fn batch_endpoint_read_back_next_request_and_compaction() {
    let root = common::demo_root("catalog-root");
    let a = root.0.join("a");
    let mut s = Server::start(&["--model", a.to_str().unwrap(), "--admin-token", TOKEN]);
    let c = reqwest::blocking::Client::new();
    let post = reqwest::Method::POST;

    // a batch with bad lines: the good ones are applied, the bad ones named
    let e = |i| json!(demo_embedding(i)).to_string();
    let body = [
        format!(r#"{{"id": "b-1", "title": "first", "embedding": {}}}"#, e(1)),
        "{not json".to_string(),
        r#"{"id": "b-3", "embedding": [1.0, 2.0]}"#.to_string(),
        format!(r#"{{"id": "b-4", "embedding": {}, "colour": "red"}}"#, e(4)),
        String::new(),
        format!(r#"{{"id": "", "embedding": {}}}"#, e(6)),
        format!(r#"{{"id": "b-7", "title": "seventh", "embedding": {}}}"#, e(7)),
    ]
    .join("\n");
    let (st, v) =
        json_of(admin(&c, &s, post.clone(), "/admin/items").header("content-type", "application/x-ndjson").body(body));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["applied"], 2, "{v}");
    let lines: Vec<u64> = v["errors"].as_array().unwrap().iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![2, 3, 4, 6], "{v}");
    assert_eq!(v["errors"][1]["field"], "embedding", "{v}");
    assert_eq!(v["errors"][3]["field"], "id", "{v}");
    assert_eq!(v["placement"]["placed"], 2, "both IDs came from the codebooks: {v}");
    // the catalog's fill: every free ID but the two taken
    let (_, info) = json_of(admin(&c, &s, reqwest::Method::GET, "/admin/catalog"));
    let sizes: Vec<u64> = info["codebook_sizes"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    let served = info["served"].as_u64().unwrap();
    assert_eq!(info["fullness"]["free_ids"].as_u64(), Some(sizes.iter().product::<u64>() - served), "{info}");
    assert_eq!(info["fullness"]["levels"].as_array().map(Vec::len), Some(sizes.len() - 1), "{info}");
    // the ANN index: the IVF written with the version, calibrated then
    let cells = info["ann"]["cells"].as_u64().unwrap_or(0);
    assert!(info["ann"]["probes"].as_u64().is_some_and(|p| p >= 1 && p <= cells), "{info}");
    // (the two new items joined their cells live)
    let (base, added) = (info["ann"]["base"].as_u64().unwrap_or(0), info["ann"]["added"].as_u64().unwrap_or(0));
    assert_eq!((base + added, added), (served, 2), "{info}");
    // a single upsert says where its ID landed
    let one = json!({"id": "b-8", "embedding": demo_embedding(8)});
    let (st, v) = json_of(admin(&c, &s, post.clone(), "/admin/items").json(&one));
    assert_eq!(st, 201, "{v}");
    assert!(v["placement"]["distance"].as_f64().is_some_and(|d| d >= 0.0), "{v}");
    let (st, v) = json_of(admin(&c, &s, reqwest::Method::GET, "/admin/items/b-7"));
    assert_eq!(st, 200);
    assert_eq!(
        (v["item_id"].as_str(), v["title"].as_str(), v["served"].as_bool()),
        (Some("b-7"), Some("seventh"), Some(true)),
        "{v}"
    );
    assert_eq!(v["semantic_id"].as_array().unwrap().len(), 4);
    assert_eq!(json_of(admin(&c, &s, reqwest::Method::GET, "/admin/items/nope")).0, 404);

    // an acknowledged item is generated by the very next request: take the
    // model's first choice for a history away, and give its semantic ID to a new item
    let rec = |s: &Server, h: &Value| {
        let (st, v) =
            json_of(c.post(s.at("/v1/recommend")).json(&json!({"history": h, "k": 1, "strategy": "generative"})));
        assert_eq!(st, 200, "{v}");
        v["items"][0].clone()
    };
    let history = json!(["3", "11", "19"]);
    let top = rec(&s, &history);
    let (victim, sid) = (top["item_id"].as_str().unwrap().to_string(), top["semantic_id"].clone());
    assert_eq!(json_of(admin(&c, &s, reqwest::Method::DELETE, &format!("/admin/items/{victim}"))).0, 200);
    let (st, v) = json_of(
        admin(&c, &s, post.clone(), "/admin/items")
            .json(&json!({"id": "heir", "embedding": demo_embedding(9), "semantic_id": sid})),
    );
    assert_eq!((st, v["created"].as_bool()), (201, Some(true)), "{v}");
    assert_eq!(rec(&s, &history)["item_id"], "heir", "the next request generates the new item");
    // a semantic ID in use is refused
    let (st, v) = json_of(
        admin(&c, &s, post.clone(), "/admin/items")
            .json(&json!({"id": "twin", "embedding": demo_embedding(2), "semantic_id": sid})),
    );
    assert_eq!(st, 409, "{v}");

    // folding the log writes the states the edits changed as a segment;
    // nothing changes for requests, and a restart reads the segment back
    let (st, v) = json_of(admin(&c, &s, post.clone(), "/admin/catalog/fold"));
    assert_eq!((st, v["entries"].as_u64()), (200, Some(5)), "b-1, b-7, b-8, the victim, heir: {v}");
    let (_, info) = json_of(admin(&c, &s, reqwest::Method::GET, "/admin/catalog"));
    assert_eq!(info["segments"].as_array().map(Vec::len), Some(1), "{info}");
    assert_eq!(info["log"]["bytes"].as_u64(), Some(0), "{info}");
    assert_eq!(rec(&s, &history)["item_id"], "heir");
    drop(s);
    s = Server::start(&["--model", a.to_str().unwrap(), "--admin-token", TOKEN]);
    assert_eq!(rec(&s, &history)["item_id"], "heir");
    let (_, v) = json_of(admin(&c, &s, reqwest::Method::GET, "/admin/items/b-7"));
    assert_eq!((v["title"].as_str(), v["served"].as_bool()), (Some("seventh"), Some(true)), "{v}");

    // compaction writes the edits into version 2 (numbered as the log it
    // starts: the fold started log 1); nothing changes for requests
    let (st, v) = json_of(admin(&c, &s, post.clone(), "/admin/catalog/compact"));
    assert_eq!((st, v["version"].as_u64()), (200, Some(2)), "{v}");
    let (_, info) = json_of(admin(&c, &s, reqwest::Method::GET, "/admin/catalog"));
    assert_eq!((info["version"].as_u64(), info["overlay_items"].as_u64()), (Some(2), Some(0)), "{info}");
    assert_eq!(info["segments"].as_array().map(Vec::len), Some(0), "the version holds them: {info}");
    assert_eq!(rec(&s, &history)["item_id"], "heir");
    // and survives a restart, served from the new version
    drop(s);
    s = Server::start(&["--model", a.to_str().unwrap(), "--admin-token", TOKEN]);
    assert_eq!(rec(&s, &history)["item_id"], "heir");
    let (_, v) = json_of(admin(&c, &s, reqwest::Method::GET, &format!("/admin/items/{victim}")));
    assert_eq!(v["served"], false, "{v}");
    // a second edit after the restart goes to the new version's log, then offline compaction
    assert_eq!(json_of(admin(&c, &s, reqwest::Method::DELETE, "/admin/items/b-1")).0, 200);
    drop(s);
    let cat = root.0.join("catalog");
    let out = ok(&["catalog", "compact", cat.to_str().unwrap()]);
    assert!(out.contains("v-000003"), "{out}");
    let info: Value = serde_json::from_str(&ok(&["catalog", "info", cat.to_str().unwrap()])).unwrap();
    assert_eq!((info["version"].as_u64(), info["edits_replayed"].as_u64()), (Some(3), Some(0)), "{info}");
}

/// Item lifetimes through HTTP: `ttl_s` and `expires_at` (RFC 3339 or epoch
/// ms) are taken, shown by `GET /admin/items/{id}` and checked (400 naming
/// the field, by line in a batch); an item is generated by every request
/// sent before its expiry and by none sent at or after it (this machine's
/// clock is the server's).
#[test]
fn items_with_a_lifetime_are_served_until_their_expiry_and_never_after() {
    let root = common::demo_root("lifetime-root");
    let a = root.0.join("a");
    let s = Server::start(&["--model", a.to_str().unwrap(), "--admin-token", TOKEN]);
    let c = reqwest::blocking::Client::new();
    let post = reqwest::Method::POST;
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let upsert = |body: Value| json_of(admin(&c, &s, post.clone(), "/admin/items").json(&body));
    // bad lifetimes are named
    let e = demo_embedding(1);
    for (body, field) in [
        (json!({"id": "x", "embedding": e, "ttl_s": -1}), "ttl_s"),
        (json!({"id": "x", "embedding": e, "ttl_s": 0}), "ttl_s"),
        (json!({"id": "x", "embedding": e, "ttl_s": 5, "expires_at": now_ms() + 9_000}), "ttl_s"),
        (json!({"id": "x", "embedding": e, "expires_at": "tomorrow"}), "expires_at"),
        (json!({"id": "x", "embedding": e, "expires_at": "2020-01-01T00:00:00Z"}), "expires_at"),
        (json!({"id": "x", "embedding": e, "expires_at": now_ms() - 1}), "expires_at"),
    ] {
        let (st, v) = upsert(body.clone());
        assert_eq!((st, v["field"].as_str()), (400, Some(field)), "{body}: {v}");
    }
    let batch = [
        json!({"id": "l-1", "embedding": demo_embedding(2), "ttl_s": 600}).to_string(),
        json!({"id": "l-2", "embedding": demo_embedding(3), "ttl_s": "soon"}).to_string(),
        json!({"id": "l-3", "embedding": demo_embedding(4), "expires_at": "2020-01-01T00:00:00Z"}).to_string(),
        json!({"id": "l-4", "embedding": demo_embedding(5), "expires_at": "2099-12-31T23:59:59.500Z"}).to_string(),
    ]
    .join("\n");
    let (st, v) =
        json_of(admin(&c, &s, post.clone(), "/admin/items").header("content-type", "application/x-ndjson").body(batch));
    assert_eq!((st, v["applied"].as_u64()), (200, Some(2)), "{v}");
    let named: Vec<(u64, &str)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert_eq!(named, vec![(2, "ttl_s"), (3, "expires_at")], "{v}");
    let (_, v) = json_of(admin(&c, &s, reqwest::Method::GET, "/admin/items/l-4"));
    assert_eq!(
        (v["expires_at"].as_str(), v["expires_at_ms"].as_u64()),
        (Some("2099-12-31T23:59:59.500Z"), Some(4_102_444_799_500)),
        "{v}"
    );

    // the model's first choice for a history, replaced by an item that lives 1.5 s
    let rec = |h: &Value, k: usize, strategy: &str| -> Vec<String> {
        let (st, v) = json_of(c.post(s.at("/v1/recommend")).json(&json!({"history": h, "k": k, "strategy": strategy})));
        assert_eq!(st, 200, "{v}");
        v["items"].as_array().unwrap().iter().map(|i| i["item_id"].as_str().unwrap().to_string()).collect()
    };
    let history = json!(["3", "11", "19"]);
    let top = rec(&history, 1, "generative")[0].clone();
    let (_, v) = json_of(admin(&c, &s, reqwest::Method::GET, &format!("/admin/items/{top}")));
    let sid = v["semantic_id"].clone();
    assert_eq!(json_of(admin(&c, &s, reqwest::Method::DELETE, &format!("/admin/items/{top}"))).0, 200);
    let (st, v) = upsert(json!({"id": "live", "embedding": demo_embedding(9), "semantic_id": sid, "ttl_s": 1.5}));
    assert_eq!(st, 201, "{v}");
    let (_, v) = json_of(admin(&c, &s, reqwest::Method::GET, "/admin/items/live"));
    let expiry = v["expires_at_ms"].as_u64().unwrap();
    assert!(v["served"].as_bool().unwrap() && v["expires_at"].as_str().is_some(), "{v}");
    let (mut before, mut after) = (0, 0);
    while after < 20 {
        let sent = now_ms();
        let got = rec(&history, 10, "auto");
        let answered = now_ms();
        if answered < expiry {
            assert_eq!(got[0], "live", "generated while it lives");
            before += 1;
        }
        if sent >= expiry {
            assert!(!got.contains(&"live".to_string()), "sent {} ms after its expiry: {got:?}", sent - expiry);
            for strategy in ["generative", "ann"] {
                assert!(!rec(&history, 50, strategy).contains(&"live".to_string()), "{strategy}");
            }
            after += 1;
        }
    }
    assert!(before > 0, "some requests were answered before the expiry");
    let (_, v) = json_of(admin(&c, &s, reqwest::Method::GET, "/admin/items/live"));
    assert_eq!((v["served"].as_bool(), v["expires_at_ms"].as_u64()), (Some(false), Some(expiry)), "{v}");
}

/// `POST /v1/events` through HTTP: bad lines named by line and field, the
/// rest counted and shown as rates on the item; `trending` and
/// `trending_share` are range-checked and, with events, the trending search
/// fills its slots after the model's own best items.
#[test]
fn events_are_counted_and_trending_reads_them() {
    let root = common::demo_root("events-root");
    let a = root.0.join("a");
    let s = Server::start(&["--model", a.to_str().unwrap(), "--admin-token", TOKEN]);
    let c = reqwest::blocking::Client::new();
    let rec = |body: Value| json_of(c.post(s.at("/v1/recommend")).json(&body));
    let history = json!(["3", "11", "19"]);
    let (st, plain) = rec(json!({"history": history, "k": 10, "strategy": "generative"}));
    assert_eq!(st, 200, "{plain}");
    let (st, v) = rec(json!({"history": history, "k": 10, "trending": -1}));
    assert_eq!((st, v["field"].as_str()), (422, Some("trending")), "{v}");
    let (st, v) = rec(json!({"history": history, "k": 10, "trending": 3, "trending_share": 1.5}));
    assert_eq!((st, v["field"].as_str()), (422, Some("trending_share")), "{v}");
    // impressions on many items, clicks on a few items far from the answer
    let listed: Vec<&str> = plain["items"].as_array().unwrap().iter().map(|i| i["item_id"].as_str().unwrap()).collect();
    let hot: Vec<String> =
        (200..260).map(|i| i.to_string()).filter(|id| !listed.contains(&id.as_str())).take(10).collect();
    let mut lines: Vec<String> =
        (0..500).map(|i| json!({"item_id": i.to_string(), "kind": "impression"}).to_string()).collect();
    for id in &hot {
        lines.push(json!({"item_id": id, "kind": "click", "value": 20}).to_string());
    }
    lines.push(json!({"item_id": "no-such-item", "kind": "click"}).to_string());
    lines.push(json!({"item_id": "5", "kind": "like"}).to_string());
    lines.push(json!({"item_id": "5", "kind": "click", "ts": "2099-01-01T00:00:00Z"}).to_string());
    lines.push(json!({"item_id": "5", "kind": "watch", "value": -2}).to_string());
    lines.push("{not json".to_string());
    let n = lines.len();
    let (st, v) =
        json_of(c.post(s.at("/v1/events")).header("content-type", "application/x-ndjson").body(lines.join("\n")));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["applied"].as_u64(), Some(n as u64 - 5), "{v}");
    let named: Vec<(u64, &str)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    let n = n as u64;
    assert_eq!(named, vec![(n - 4, "item_id"), (n - 3, "kind"), (n - 2, "ts"), (n - 1, "value"), (n, "body")], "{v}");
    let metrics = c.get(s.at("/metrics")).send().unwrap().text().unwrap();
    let counted =
        metrics.lines().find_map(|l| l.strip_prefix("genrec_events_total ")).map(|v| v.trim().parse::<f64>().unwrap());
    assert_eq!(counted, Some((n - 5) as f64), "the events counter");
    let (_, item) = json_of(admin(&c, &s, reqwest::Method::GET, &format!("/admin/items/{}", hot[0])));
    let per_min = &item["rates"]["per_minute"];
    assert!(per_min["click"].as_f64().unwrap() > 1.0 && per_min["impression"].as_f64().unwrap() > 0.0, "{item}");
    assert_eq!(item["rates"]["half_life_s"].as_f64(), Some(600.0), "{item}");
    // the prior moves the answer towards the clicked items
    let (st, with) = rec(json!({"history": history, "k": 10, "strategy": "generative", "trending": 3}));
    assert_eq!(st, 200, "{with}");
    let hot_in = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| hot.contains(&i["item_id"].as_str().unwrap().to_string()))
            .count()
    };
    assert!(hot_in(&with) > hot_in(&plain), "{with}");
    // (the default share, 0.3: the model's best 7, then the trending search's)
    let items = with["items"].as_array().unwrap();
    assert_eq!(items[..7], plain["items"].as_array().unwrap()[..7], "{with}");
    for i in &items[7..] {
        assert_eq!(i["source"], "trending", "{with}");
        assert!(hot.contains(&i["item_id"].as_str().unwrap().to_string()), "{with}");
    }
    let (_, off) = rec(json!({"history": history, "k": 10, "strategy": "generative", "trending": 0}));
    assert_eq!(off["items"], plain["items"], "weight 0 is the model's own answer");
}

/// Two servers on one catalog folder: the second serves it read-only and
/// refuses edits with 409 naming why; the first keeps writing.
#[test]
fn a_second_server_on_the_same_folder_serves_read_only() {
    let root = common::demo_root("catalog-root");
    let a = root.0.join("a");
    let args = ["--model", a.to_str().unwrap(), "--admin-token", TOKEN];
    let first = Server::start(&args);
    let second = Server::start(&args);
    let c = reqwest::blocking::Client::new();
    let item = |id: &str, i| json!({"id": id, "embedding": demo_embedding(i)});
    let (st, v) = json_of(admin(&c, &second, reqwest::Method::POST, "/admin/items").json(&item("ro-1", 11)));
    assert_eq!(st, 409, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("in use by another genrec process"), "{v}");
    let (st, v) = json_of(c.post(second.at("/v1/recommend")).json(&json!({"history": ["3"], "k": 2})));
    assert_eq!((st, v["items"].as_array().map(Vec::len)), (200, Some(2)), "{v}");
    let (st, v) = json_of(admin(&c, &first, reqwest::Method::POST, "/admin/items").json(&item("rw-1", 12)));
    assert_eq!(st, 201, "{v}");
}

/// Clients stream upserts and deletes; the server is killed with SIGKILL in
/// the middle. After a restart every acknowledged edit is there.
#[test]
fn kill_9_during_upserts_loses_no_acknowledged_edit() {
    let root = common::demo_root("catalog-root");
    let a = root.0.join("a");
    let args = ["--model", a.to_str().unwrap(), "--admin-token", TOKEN];
    let s = Server::start(&args);
    let url = s.url.clone();
    let stop_at = Instant::now() + Duration::from_millis(2500);
    let mut clients = Vec::new();
    for t in 0..4usize {
        let url = url.clone();
        clients.push(std::thread::spawn(move || {
            let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
            let mut acked: Vec<(String, bool)> = Vec::new(); // (id, served) in acknowledgement order
            let mut in_flight: Option<String> = None; // an edit of an acknowledged id sent but never answered
            let mut i = 0;
            while Instant::now() < stop_at {
                let id = format!("k{t}-{i}");
                let r = if t == 3 {
                    // batches of 20
                    let body: Vec<String> = (0..20)
                        .map(|j| {
                            format!(
                                r#"{{"id": "{id}-{j}", "embedding": {}}}"#,
                                json!(demo_embedding(1_000_000 + i * 20 + j))
                            )
                        })
                        .collect();
                    c.post(format!("{url}/admin/items"))
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/x-ndjson")
                        .body(body.join("\n"))
                        .send()
                } else if i % 5 == 4 && !acked.is_empty() {
                    // delete an acknowledged item of this client
                    let victim = acked[acked.len() / 2].0.clone();
                    match c.delete(format!("{url}/admin/items/{victim}")).bearer_auth(TOKEN).send() {
                        Ok(r) if r.status().as_u16() == 200 => acked.push((victim, false)),
                        Ok(_) => {}
                        // the server died with the delete in flight: it may or may not
                        // have been made durable, so either state is right afterwards
                        Err(_) => {
                            in_flight = Some(victim);
                            break;
                        }
                    }
                    i += 1;
                    continue;
                } else {
                    c.post(format!("{url}/admin/items"))
                        .bearer_auth(TOKEN)
                        .json(&json!({"id": id, "embedding": demo_embedding(t * 100_000 + i)}))
                        .send()
                };
                match r {
                    Ok(r) if r.status().is_success() => {
                        if t == 3 {
                            let v: Value = r.json().unwrap_or(Value::Null);
                            if v["applied"] == 20 {
                                acked.extend((0..20).map(|j| (format!("{id}-{j}"), true)));
                            }
                        } else {
                            acked.push((id, true));
                        }
                    }
                    Ok(_) => {}      // refused (e.g. no free semantic ID): not acknowledged
                    Err(_) => break, // the server is gone
                }
                i += 1;
            }
            (acked, in_flight)
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let pid = s.pid();
    let killed = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let (mut acked, mut in_flight) = (Vec::new(), Vec::new());
    for c in clients {
        let (a, f) = c.join().unwrap();
        acked.extend(a);
        in_flight.extend(f);
    }
    drop(s);
    assert!(acked.len() > 50, "the clients got {} edits acknowledged", acked.len());
    // the last acknowledged state of each id must be there after a restart
    let mut last = std::collections::HashMap::new();
    for (id, served) in &acked {
        last.insert(id.clone(), *served);
    }
    for id in &in_flight {
        last.remove(id);
    }
    let s = Server::start(&args);
    let c = reqwest::blocking::Client::new();
    let mut wrong = Vec::new();
    for (id, served) in &last {
        let (st, v) = json_of(admin(&c, &s, reqwest::Method::GET, &format!("/admin/items/{id}")));
        if st != 200 || v["served"] != json!(*served) {
            wrong.push(format!("{id}: {st} {v}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} acknowledged edits lost: {:?}",
        wrong.len(),
        last.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// `genrec index --out DIR` onto a folder a server serves is refused (the
/// server went on acknowledging edits into a log the new catalog never
/// reads: they were gone on restart); onto a folder nobody serves, the new
/// catalog becomes the folder's next version, switched to at once (the
/// folder never lacks a catalog), with the old catalog's edits and logs gone.
#[test]
fn index_onto_a_served_folder_is_refused_and_onto_an_idle_one_is_the_next_version() {
    let tmp = TempDir::new("index-served");
    let p = |s: &str| tmp.0.join(s).to_string_lossy().into_owned();
    let (n, dim) = (300, 12);
    write_items(&tmp.0.join("items.jsonl"), n);
    let rows: Vec<Vec<f32>> = (0..n).map(|i| vector(i, dim)).collect();
    write_embeddings(&tmp.0.join("emb.safetensors"), &rows, false);
    let index = ["index", "--items", &p("items.jsonl"), "--embeddings", &p("emb.safetensors"), "--out", &p("cat")];
    let index = [&index[..], &["--levels", "2", "--codebook-size", "8"]].concat();
    ok(&index);

    let s = Server::start(&["--catalog", &p("cat"), "--no-model", "--admin-token", TOKEN]);
    let c = reqwest::blocking::Client::new();
    let body = json!({"id": "added", "title": "added while served", "embedding": vector(n + 1, dim)});
    let (st, v) = json_of(admin(&c, &s, reqwest::Method::POST, "/admin/items").json(&body));
    assert_eq!(st, 201, "{v}");
    let err = fails(&index);
    assert!(err.contains("served by a running genrec process"), "{err}");
    assert_eq!(json_of(admin(&c, &s, reqwest::Method::GET, "/admin/items/added")).0, 200);
    drop(s);
    // the acknowledged edit survived: the folder was not replaced
    let s = Server::start(&["--catalog", &p("cat"), "--no-model", "--admin-token", TOKEN]);
    assert_eq!(json_of(admin(&c, &s, reqwest::Method::GET, "/admin/items/added")).0, 200);
    drop(s);

    ok(&index);
    let info: Value = serde_json::from_str(&ok(&["catalog", "info", &p("cat")])).unwrap();
    assert!(info["version"].as_u64().unwrap() > 1, "the next version: {info}");
    assert_eq!(info["served"].as_u64(), Some(n as u64), "only the new catalog's items: {info}");
    let left: Vec<String> = std::fs::read_dir(p("cat"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.contains(".tmp") || f == "v-000001" || f == "edits-000001.log")
        .collect();
    assert!(left.is_empty(), "left over: {left:?}");
}
