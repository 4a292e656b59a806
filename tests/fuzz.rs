//! Property-based fuzzing (proptest) of what callers send: JSON bodies built from the API's
//! own field names and raw bytes, on every route of an in-process server, and filters through
//! the id translation and both stores' conversions. No input may panic the process or answer
//! a 5xx. `PROPTEST_CASES` sets the cases per property (256 by default; CI runs the default).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;

use mrl::Embedder;
use mrl_service::store::{
    point_filter, remote::filter_from_json, CollectionSpec, Distance, EdgeStore, StoredDocument,
    VectorQuery, VectorStore,
};
use mrl_service::ServeConfig;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Field names of the API, so generated objects reach past the first check.
const KEYS: &[&str] = &[
    "inputs",
    "input",
    "dim",
    "dimensions",
    "profile",
    "normalize",
    "model",
    "encoding_format",
    "user",
    "documents",
    "id",
    "_id",
    "text",
    "title",
    "payload",
    "metadata",
    "ids",
    "query",
    "vector",
    "limit",
    "filter",
    "funnel",
    "candidates",
    "exact",
    "dims",
    "distance",
    "must",
    "should",
    "must_not",
    "key",
    "match",
    "value",
    "any",
    "except",
    "range",
    "gt",
    "gte",
    "lt",
    "lte",
    "has_id",
    "is_empty",
    "is_null",
    "min_should",
    "nested",
    "group",
];

/// String values the API gives meaning to.
const WORDS: &[&str] = &[
    "",
    " ",
    "full",
    "b50",
    "layers=3",
    "layers=9",
    "heads=0",
    "float",
    "base64",
    "cosine",
    "dot",
    "euclid",
    "a text",
    "group",
    "even",
    "all-MiniLM-L6-v2:full",
    "m:nope",
    "_id",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u32..1024).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![1e39, -1e39, 1e-45, 3.4e38, 0.5]).prop_map(Value::from),
        prop::sample::select(WORDS).prop_map(Value::from),
        "[a-z0-9 ]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<String, Value>>(),
                )
            }),
        ]
    })
}

/// Routes a body can go to.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/embed"),
    ("POST", "/v1/embeddings"),
    ("PUT", "/collections/g"),
    ("POST", "/collections/f/documents"),
    ("DELETE", "/collections/f/documents"),
    ("POST", "/collections/f/search"),
];

fn server() -> SocketAddr {
    static S: OnceLock<SocketAddr> = OnceLock::new();
    *S.get_or_init(|| {
        let data = std::env::temp_dir().join(format!("mrl-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let config = ServeConfig::new()
            .data_dir(data)
            .port(0)
            .max_inputs(16)
            .max_body_bytes(64 * 1024);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let embedder = Embedder::load(common::model_dir()).expect("loading the model");
                let running = mrl_service::start(embedder, config).expect("starting");
                tx.send(running.addr).unwrap();
                running.server.await.unwrap();
            })
        });
        let addr = rx.recv().expect("the server started");
        let (status, v) =
            common::server::call(addr, "PUT", "/collections/f", Some(json!({"dims": [384]})));
        assert_eq!(status, 201, "{v}");
        addr
    })
}

/// Sends raw `body` and returns the status; panics when no HTTP answer comes back.
fn send(method: &str, path: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(server()).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP answer ({text:?})"))
}

fn store() -> &'static EdgeStore {
    static S: OnceLock<EdgeStore> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mrl-fuzz-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EdgeStore::open(&dir).unwrap();
        let spec = CollectionSpec {
            dims: vec![4],
            profile: "full".into(),
            model: "m".into(),
            distance: Distance::Cosine,
        };
        store.create("c", &spec).unwrap();
        let docs = (0..20)
            .map(|i| StoredDocument {
                id: i.to_string(),
                text: format!("t{i}"),
                payload: json!({"group": if i % 2 == 0 {"even"} else {"odd"}, "n": i})
                    .as_object()
                    .unwrap()
                    .clone(),
                vectors: vec![(4, vec![1.0, i as f32, 0.5, -1.0])],
            })
            .collect();
        store.upsert("c", docs).unwrap();
        store
    })
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Any JSON body on any route: a 2xx or a 4xx, never a 5xx or a dropped connection.
    #[test]
    fn json_bodies_never_answer_5xx(route in 0..ROUTES.len(), body in json_value()) {
        let (method, path) = ROUTES[route];
        let status = send(method, path, body.to_string().as_bytes());
        prop_assert!(status < 500, "{method} {path} {body}: {status}");
    }

    /// Any bytes on any route.
    #[test]
    fn raw_bodies_never_answer_5xx(route in 0..ROUTES.len(), body in prop::collection::vec(any::<u8>(), 0..96)) {
        let (method, path) = ROUTES[route];
        let status = send(method, path, &body);
        prop_assert!(status < 500, "{method} {path} {body:?}: {status}");
    }

    /// Any filter through the id translation, the gRPC conversion and the embedded engine:
    /// an answer or an error, never a panic.
    #[test]
    fn filters_convert_or_fail_cleanly(filter in json_value()) {
        if let Ok(points) = point_filter(&filter) {
            let _ = filter_from_json(&points);
        }
        let mut q = VectorQuery::nested(&[1.0, 2.0, 0.0, 0.5], 4, 5, None).unwrap();
        q.filter = Some(filter);
        let _ = store().search("c", &q);
    }
}
