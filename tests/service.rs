//! The REST service end to end on ephemeral ports: every route, every error class, batching
//! under load (429 when the queue is full) and the official OpenAI Python client.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;

use common::{cosine, model_dir, references};
use mrl::Embedder;
use mrl_service::ServeConfig;
use serde_json::{json, Value};

/// Starts a server for `config` on a free port, in a thread of its own, and returns where it
/// listens. It lives until the test process ends.
fn spawn(config: ServeConfig) -> SocketAddr {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let data = std::env::temp_dir().join(format!("mrl-service-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let config = config.data_dir(data);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let embedder = Embedder::load(model_dir()).expect("loading the model");
            let running = mrl_service::start(embedder, config.port(0)).expect("starting");
            tx.send(running.addr).unwrap();
            running.server.await.unwrap();
        })
    });
    rx.recv().expect("the server started")
}

const KEY: &str = "test-key-123";
/// The official OpenAI client the compatibility test drives, pinned.
const OPENAI: &str = "openai==3.63.0";

fn server() -> SocketAddr {
    static S: OnceLock<SocketAddr> = OnceLock::new();
    *S.get_or_init(|| {
        spawn(
            ServeConfig::new()
                .api_key(Some(KEY.into()))
                .max_body_bytes(64 * 1024)
                .max_inputs(8),
        )
    })
}

struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
fn call(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(k) = key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; a reset write is fine.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn post(path: &str, body: &Value) -> Response {
    call(
        server(),
        "POST",
        path,
        Some(KEY),
        body.to_string().as_bytes(),
    )
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn embed_matches_the_reference_and_reports_usage() {
    let Some(_) = common::needs(&["fixtures"]) else {
        return;
    };
    let refs = references();
    let texts: Vec<&str> = refs.iter().take(5).map(|r| r.text.as_str()).collect();
    let r = post("/embed", &json!({"inputs": texts}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["model"], "all-MiniLM-L6-v2");
    assert_eq!(body["profile"], "full");
    assert_eq!(body["dim"], 384);
    let tokens: usize = refs.iter().take(5).map(|r| r.input_ids.len()).sum();
    assert_eq!(body["usage"]["tokens"], tokens);
    for (r, v) in refs.iter().zip(body["embeddings"].as_array().unwrap()) {
        assert!(cosine(&floats(v), &r.embedding) > 0.9999, "{}", r.text);
    }
    // A single string, a spec profile, and raw (unnormalised) output.
    let r = post(
        "/embed",
        &json!({"inputs": "hello", "profile": "layers=3", "normalize": false}),
    );
    assert_eq!(r.status, 200);
    let v = floats(&r.json()["embeddings"][0]);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(norm > 1.5, "raw vectors are not unit length: {norm}");
    assert_eq!(r.json()["profile"], "layers=3");
}

#[test]
fn openai_endpoint_returns_float_and_base64() {
    let r = post(
        "/v1/embeddings",
        &json!({"input": ["first text", "second text"], "model": "text-embedding-3-small", "user": "u1"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 4);
    assert_eq!(
        body["usage"]["prompt_tokens"],
        body["usage"]["total_tokens"]
    );
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["object"], "embedding");
    let float = floats(&data[1]["embedding"]);
    assert_eq!(float.len(), 384);

    let r = post(
        "/v1/embeddings",
        &json!({"input": ["first text", "second text"], "model": "m", "encoding_format": "base64", "dimensions": 384}),
    );
    assert_eq!(r.status, 200);
    use base64::Engine;
    let b64 = r.json()["data"][1]["embedding"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(decoded, float);
}

#[test]
fn health_metrics_and_openapi() {
    // Health needs no key.
    let r = call(server(), "GET", "/health", None, b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    post("/embed", &json!({"inputs": ["count me"]}));
    let r = call(server(), "GET", "/metrics", Some(KEY), b"");
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    for needle in [
        "mrl_requests_total{route=\"/embed\",status=\"200\"}",
        "mrl_request_duration_seconds_bucket",
        "mrl_batch_texts_count",
        "mrl_queue_depth ",
        "mrl_tokens_total",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let r = call(server(), "GET", "/openapi.json", Some(KEY), b"");
    assert_eq!(r.status, 200);
    let doc = r.json();
    for path in [
        "/embed",
        "/v1/embeddings",
        "/health",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
}

/// Route, body, expected status, `error.type` and `error.field`.
type ErrorCase = (
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
    Option<&'static str>,
);

/// Every error class: status, `error.type`, and the field it names.
#[test]
fn errors_have_one_shape_and_name_the_field() {
    let Some(_) = common::needs(&["fixtures"]) else {
        return;
    };
    let cases: Vec<ErrorCase> = vec![
        (
            "/embed",
            b"{\"inputs\": [\"a\"".to_vec(),
            400,
            "malformed_json",
            None,
        ),
        ("/embed", b"[1, 2]".to_vec(), 400, "malformed_json", None),
        (
            "/embed",
            b"{\"inputs\": \"\xff\xfe\"}".to_vec(),
            400,
            "malformed_json",
            None,
        ),
        (
            "/embed",
            br#"{"inputs": 7}"#.to_vec(),
            400,
            "invalid_request",
            Some("inputs"),
        ),
        (
            "/embed",
            br#"{"inputs": ["ok", 3]}"#.to_vec(),
            400,
            "invalid_request",
            Some("inputs[1]"),
        ),
        (
            "/embed",
            br#"{"inputs": []}"#.to_vec(),
            400,
            "invalid_request",
            Some("inputs"),
        ),
        (
            "/embed",
            br#"{"inputs": ["  "]}"#.to_vec(),
            400,
            "invalid_request",
            Some("inputs[0]"),
        ),
        // A misspelt field is named before the field it stands for is missed.
        (
            "/embed",
            br#"{"text": "x"}"#.to_vec(),
            400,
            "invalid_request",
            Some("text"),
        ),
        (
            "/embed",
            br#"{"dim": 64}"#.to_vec(),
            400,
            "invalid_request",
            Some("inputs"),
        ),
        (
            "/embed",
            br#"{"inputs": "x", "dim": 128}"#.to_vec(),
            400,
            "invalid_request",
            Some("dim"),
        ),
        (
            "/embed",
            br#"{"inputs": "x", "dim": 0}"#.to_vec(),
            400,
            "invalid_request",
            Some("dim"),
        ),
        (
            "/embed",
            br#"{"inputs": "x", "dim": "64"}"#.to_vec(),
            400,
            "invalid_request",
            Some("dim"),
        ),
        (
            "/embed",
            br#"{"inputs": "x", "profile": "tiny"}"#.to_vec(),
            400,
            "invalid_request",
            Some("profile"),
        ),
        (
            "/embed",
            br#"{"inputs": "x", "profile": "layers=9"}"#.to_vec(),
            400,
            "invalid_request",
            Some("profile"),
        ),
        (
            "/embed",
            br#"{"inputs": "x", "normalize": "yes"}"#.to_vec(),
            400,
            "invalid_request",
            Some("normalize"),
        ),
        (
            "/embed",
            json!({"inputs": vec!["t"; 9]}).to_string().into_bytes(),
            400,
            "invalid_request",
            Some("inputs"),
        ),
        (
            "/embed",
            json!({"inputs": "x".repeat(70_000)})
                .to_string()
                .into_bytes(),
            413,
            "payload_too_large",
            None,
        ),
        (
            "/v1/embeddings",
            br#"{"input": "x", "dimensions": 100}"#.to_vec(),
            400,
            "invalid_request",
            Some("dimensions"),
        ),
        (
            "/v1/embeddings",
            br#"{"input": "x", "encoding_format": "hex"}"#.to_vec(),
            400,
            "invalid_request",
            Some("encoding_format"),
        ),
        (
            "/v1/embeddings",
            br#"{"input": [[101, 102]]}"#.to_vec(),
            400,
            "invalid_request",
            Some("input"),
        ),
        (
            "/v1/embeddings",
            br#"{"input": "x", "model": "m:nope"}"#.to_vec(),
            400,
            "invalid_request",
            Some("model"),
        ),
        (
            "/v1/embeddings",
            br#"{"model": "m"}"#.to_vec(),
            400,
            "invalid_request",
            Some("input"),
        ),
    ];
    for (path, body, status, kind, field) in cases {
        let r = call(server(), "POST", path, Some(KEY), &body);
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(60)
            .collect::<String>();
        assert_eq!(
            r.status,
            status,
            "{path} {shown}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let e = &r.json()["error"];
        assert!(!e["message"].as_str().unwrap().is_empty());
        if path.starts_with("/v1/") {
            // OpenAI's shape: the field in `param`, our kind in `code`.
            assert_eq!(e["type"], "invalid_request_error", "{path} {shown}: {e}");
            assert_eq!(e["code"], kind, "{path} {shown}: {e}");
            assert_eq!(e["param"].as_str(), field, "{path} {shown}: {e}");
            assert!(e.get("field").is_none(), "{e}");
        } else {
            assert_eq!(e["type"], kind, "{path} {shown}: {e}");
            assert_eq!(e["field"].as_str(), field, "{path} {shown}: {e}");
        }
    }
    // The unknown-dim message names what is allowed.
    let r = post("/embed", &json!({"inputs": "x", "dim": 128}));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("[384]"));
    // Authentication: missing and wrong keys.
    for key in [None, Some("wrong-key-000")] {
        let r = call(server(), "POST", "/embed", key, br#"{"inputs": "x"}"#);
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"]["type"], "unauthorized");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        let r = call(
            server(),
            "POST",
            "/v1/embeddings",
            key,
            br#"{"input": "x"}"#,
        );
        assert_eq!(r.status, 401);
        let e = &r.json()["error"];
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), &e["param"]),
            (
                Some("invalid_request_error"),
                Some("invalid_api_key"),
                &Value::Null
            ),
            "{e}"
        );
    }
    let r = call(server(), "GET", "/metrics", None, b"");
    assert_eq!(r.status, 401);
    // Unknown routes and methods.
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/embed"),
        ("DELETE", "/v1/embeddings"),
    ] {
        let r = call(server(), method, path, Some(KEY), b"");
        assert_eq!(r.status, 404, "{method} {path}");
        let e = &r.json()["error"];
        if path.starts_with("/v1/") {
            assert_eq!(
                (&e["type"], &e["code"]),
                (&json!("invalid_request_error"), &json!("not_found"))
            );
        } else {
            assert_eq!(e["type"], "not_found");
        }
    }
}

#[test]
fn any_dim_and_reject_long_inputs_are_server_options() {
    let addr = spawn(ServeConfig::new().allow_any_dim(true).truncate(false));
    let ok = call(
        addr,
        "POST",
        "/embed",
        None,
        br#"{"inputs": "x", "dim": 100}"#,
    );
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["embeddings"][0].as_array().unwrap().len(), 100);
    let long = "word ".repeat(400);
    let body = json!({"inputs": ["short", long]}).to_string();
    let r = call(addr, "POST", "/embed", None, body.as_bytes());
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["type"], "input_too_long");
    assert_eq!(r.json()["error"]["field"], "inputs[1]");
    let r = call(
        addr,
        "POST",
        "/embed",
        None,
        br#"{"inputs": "x", "dim": 385}"#,
    );
    assert_eq!(r.status, 400);
}

#[test]
fn a_full_queue_answers_429_with_retry_after_and_loses_nothing_else() {
    let addr = spawn(ServeConfig::new().queue_capacity(1).max_batch_tokens(2048));
    let long = "many words in a long passage ".repeat(60);
    let body = json!({"inputs": vec![long; 8]}).to_string();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || call(addr, "POST", "/embed", None, body.as_bytes()))
        })
        .collect();
    let responses: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    assert!(
        !busy.is_empty(),
        "8 concurrent requests against a queue of 1"
    );
    for r in &busy {
        assert_eq!(r.headers["retry-after"], "1");
        assert_eq!(r.json()["error"]["type"], "overloaded");
    }
    for r in responses.iter().filter(|r| r.status != 429) {
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["embeddings"].as_array().unwrap().len(), 8);
    }
}

/// The official `openai` Python package, pointed at the server (pip installs it into the mrl
/// cache the first time).
#[test]
fn the_official_openai_client_works() {
    let Some(_) = common::needs(&["fixtures"]) else {
        return;
    };
    let addr = server();
    let script = format!(
        r#"
import openai
client = openai.OpenAI(base_url="http://{addr}/v1", api_key="{KEY}")
r = client.embeddings.create(input=["A man is playing a guitar.", "hello"], model="all-MiniLM-L6-v2")
print(len(r.data), len(r.data[0].embedding), r.usage.prompt_tokens, r.data[0].embedding[0])
"#
    );
    let out = common::python_with(&[OPENAI])
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the openai client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(parts[..2], ["2", "384"], "{text}");
    let reference = references()
        .into_iter()
        .find(|r| r.text == "A man is playing a guitar.")
        .unwrap();
    let first: f32 = parts[3].parse().unwrap();
    assert!((first - reference.embedding[0]).abs() < 1e-4, "{text}");
}

/// `GET /openapi.json` describes exactly the routes the server registers
/// (`mrl_service::routes`), each with its request and response schemas, and is a valid
/// OpenAPI document (`openapi-spec-validator`, which pip installs into the mrl cache).
#[test]
fn the_openapi_document_lists_every_route_and_validates() {
    let r = call(server(), "GET", "/openapi.json", Some(KEY), b"");
    assert_eq!(r.status, 200);
    let doc = r.json();
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            let ok = op["responses"]
                .as_object()
                .unwrap()
                .iter()
                .find(|(code, _)| code.starts_with('2'))
                .unwrap_or_else(|| panic!("{method} {path}: no 2xx response"))
                .1;
            assert!(
                ok["content"]
                    .as_object()
                    .is_some_and(|c| c.values().all(|m| m.get("schema").is_some())),
                "{method} {path}: no response schema: {ok}"
            );
            if method == "post" || method == "put" {
                assert!(
                    op["requestBody"]["content"]["application/json"]["schema"].is_object(),
                    "{method} {path}: no request schema"
                );
            }
        }
    }
    let registered: std::collections::BTreeSet<(String, String)> = mrl_service::routes()
        .into_iter()
        .map(|(m, path, _)| (m.to_string(), path.to_string()))
        .collect();
    assert_eq!(documented, registered);
    assert!(registered.len() >= 12, "{registered:?}");

    // The committed copy (docs/openapi.json, linked from docs/api.md) is the served one;
    // `MRL_WRITE_OPENAPI=1 cargo test --release --test service openapi` rewrites it.
    let committed = common::root().join("docs").join("openapi.json");
    if std::env::var_os("MRL_WRITE_OPENAPI").is_some() {
        std::fs::write(
            &committed,
            serde_json::to_string_pretty(&doc).unwrap() + "\n",
        )
        .unwrap();
    }
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(&committed).unwrap_or_else(|e| panic!("{committed:?}: {e}")),
    )
    .unwrap();
    assert!(
        on_disk == doc,
        "docs/openapi.json is stale: rerun with MRL_WRITE_OPENAPI=1 and commit it"
    );

    let file = std::env::temp_dir().join(format!("mrl-openapi-{}.json", std::process::id()));
    std::fs::write(&file, r.body).unwrap();
    let out = common::python_with(&["openapi-spec-validator==0.9.0"])
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; \
             validate(json.load(open(sys.argv[1])))",
        ])
        .arg(&file)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
