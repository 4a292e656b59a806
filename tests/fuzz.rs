//! Property-based fuzzing (proptest) of what callers send: arbitrary JSON built from the API's
//! own field names, bodies shaped like each route's request, and raw bytes, on every route of
//! an in-process server; and filters through the id translation and both stores' conversions. No input may panic the process or answer
//! a 5xx. `PROPTEST_CASES` sets the cases per property (256 by default; CI runs the default).

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;

use mrl::Embedder;
use mrl_core::store::{
    point_filter, remote::filter_from_json, CollectionSpec, Distance, EdgeStore, StoreError,
    StoredDocument, VectorQuery, VectorStore,
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

/// An object with each of `fields` absent, valid-looking (mostly) or arbitrary.
fn shaped(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    fields
        .into_iter()
        .map(|(key, valid)| {
            prop_oneof![
                12 => valid.prop_map(Some),
                1 => json_value().prop_map(Some),
                1 => Just(None),
            ]
            .prop_map(move |v| (key, v))
        })
        .collect::<Vec<_>>()
        .prop_map(|kvs| {
            Value::Object(
                kvs.into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                    .collect(),
            )
        })
        .boxed()
}

fn pick<T: Into<Value> + Clone + std::fmt::Debug + 'static>(items: Vec<T>) -> BoxedStrategy<Value> {
    prop::sample::select(items).prop_map(Into::into).boxed()
}

fn text() -> BoxedStrategy<Value> {
    prop_oneof![
        pick(vec!["a short text", "where is the cat?", " ", ""]),
        "[a-z ]{0,40}".prop_map(Value::from)
    ]
    .boxed()
}

fn texts() -> BoxedStrategy<Value> {
    prop_oneof![
        text(),
        prop::collection::vec(text(), 0..4).prop_map(Value::from)
    ]
    .boxed()
}

/// A Qdrant filter with the conditions the stores convert, some of them malformed.
fn filter() -> BoxedStrategy<Value> {
    let number = || {
        prop_oneof![
            any::<i32>().prop_map(Value::from),
            pick(vec![1e39, -0.5, 1e300]),
            json_value()
        ]
    };
    let condition = prop_oneof![
        shaped(vec![
            ("key", pick(vec!["group", "n", "_id", "a.b"])),
            (
                "match",
                shaped(vec![
                    (
                        "value",
                        prop_oneof![pick(vec!["even", "odd"]), number()].boxed()
                    ),
                    (
                        "any",
                        prop::collection::vec(pick(vec!["even", "x"]), 0..3)
                            .prop_map(Value::from)
                            .boxed()
                    )
                ])
            ),
        ]),
        shaped(vec![
            ("key", pick(vec!["n"])),
            (
                "range",
                shaped(vec![("gte", number().boxed()), ("lt", number().boxed())])
            ),
        ]),
        shaped(vec![(
            "has_id",
            prop::collection::vec(
                prop_oneof![
                    pick(vec!["d1", "0b8e1f8a-3c1e-4a53-9b7a-2f3c4d5e6f70"]),
                    any::<i64>().prop_map(Value::from)
                ],
                0..3
            )
            .prop_map(Value::from)
            .boxed()
        )]),
        shaped(vec![(
            "is_empty",
            shaped(vec![("key", pick(vec!["group"]))])
        )]),
    ];
    shaped(vec![
        (
            "must",
            prop::collection::vec(condition.clone(), 0..3)
                .prop_map(Value::from)
                .boxed(),
        ),
        (
            "must_not",
            prop::collection::vec(condition.clone(), 0..2)
                .prop_map(Value::from)
                .boxed(),
        ),
        (
            "should",
            prop::collection::vec(condition, 0..2)
                .prop_map(Value::from)
                .boxed(),
        ),
    ])
}

/// A body for route `i` of `ROUTES`, shaped like the route's request.
fn body_for(i: usize) -> BoxedStrategy<Value> {
    let dim = || pick(vec![64u64, 384, 64, 384, 64, 384, 0, 7, 385, 1 << 40]);
    let vector = prop_oneof![
        prop::collection::vec(-1.0f64..1.0, 64).prop_map(Value::from),
        prop::collection::vec(prop_oneof![-1.0f64..1.0, Just(1e39), Just(0.0)], 0..70)
            .prop_map(Value::from),
    ]
    .boxed();
    match ROUTES[i].1 {
        "/embed" => shaped(vec![
            ("inputs", texts()),
            ("dim", dim()),
            ("profile", pick(vec!["full", "layers=3", "b50", "layers=9"])),
            ("normalize", any::<bool>().prop_map(Value::from).boxed()),
        ]),
        "/v1/embeddings" => shaped(vec![
            ("input", texts()),
            ("model", pick(vec!["m", "m:full", "m:layers=2", "m:nope"])),
            ("dimensions", dim()),
            ("encoding_format", pick(vec!["float", "base64", "hex"])),
        ]),
        "/collections/g" => shaped(vec![
            (
                "dims",
                prop::collection::vec(dim(), 0..3)
                    .prop_map(Value::from)
                    .boxed(),
            ),
            ("profile", pick(vec!["full", "layers=2"])),
            ("distance", pick(vec!["cosine", "dot", "x"])),
        ]),
        "/collections/f/search" => {
            let common = |first: (&'static str, BoxedStrategy<Value>)| {
                shaped(vec![
                    first,
                    ("dim", dim()),
                    ("limit", pick(vec![1u64, 10, 1000, 0, 1001])),
                    ("filter", filter()),
                    (
                        "funnel",
                        shaped(vec![
                            ("dim", dim()),
                            ("candidates", pick(vec![5u64, 100, 100_001, 1 << 50])),
                        ]),
                    ),
                    ("exact", any::<bool>().prop_map(Value::from).boxed()),
                ])
            };
            prop_oneof![common(("query", text())), common(("vector", vector))].boxed()
        }
        "/collections/f/documents" if ROUTES[i].0 == "POST" => shaped(vec![(
            "documents",
            prop::collection::vec(
                shaped(vec![
                    ("id", pick(vec!["d1", "d2", "42"])),
                    ("text", text()),
                    ("title", text()),
                    (
                        "payload",
                        shaped(vec![
                            ("group", pick(vec!["even", "odd"])),
                            ("_id", pick(vec!["x"])),
                        ]),
                    ),
                ]),
                0..4,
            )
            .prop_map(Value::from)
            .boxed(),
        )]),
        _ => shaped(vec![(
            "ids",
            prop::collection::vec(prop_oneof![pick(vec!["d1", "42"]), json_value()], 0..3)
                .prop_map(Value::from)
                .boxed(),
        )]),
    }
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

/// Answers seen so far by status class (2xx, 4xx), shown every 1,000 requests so a long
/// run reports how deep its inputs reached.
static ANSWERS: [std::sync::atomic::AtomicUsize; 2] = [
    std::sync::atomic::AtomicUsize::new(0),
    std::sync::atomic::AtomicUsize::new(0),
];

fn tally(status: u16) {
    use std::sync::atomic::Ordering::Relaxed;
    let class = usize::from(status >= 300);
    ANSWERS[class].fetch_add(1, Relaxed);
    let (ok, refused) = (ANSWERS[0].load(Relaxed), ANSWERS[1].load(Relaxed));
    if (ok + refused) % 1000 == 0 {
        eprintln!("fuzz: {} requests, {ok} 2xx, {refused} 4xx", ok + refused);
    }
}

/// Sends raw `body` and returns the status; panics when no HTTP answer comes back.
fn send(method: &str, path: &str, body: &[u8]) -> u16 {
    let (status, _) = common::server::raw(server(), method, path, body);
    tally(status);
    status
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
            precision: Default::default(),
            distance: Distance::Cosine,
            layout: Default::default(),
            adapt: None,
            prompts: Default::default(),
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
                vectors: vec![("d4".into(), vec![1.0, i as f32, 0.5, -1.0])],
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

    /// Bodies shaped like each route's request, fields valid, odd or arbitrary, so inputs
    /// reach the embedding, the store and the engine's filters.
    #[test]
    fn shaped_bodies_never_answer_5xx((route, body) in (0..ROUTES.len()).prop_flat_map(|i| (Just(i), body_for(i)))) {
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
        q.filter = Some(filter.clone());
        // A filter is answered or refused as a filter; a storage error means the engine failed.
        let answer = store().search("c", &q);
        prop_assert!(!matches!(answer, Err(StoreError::Storage(_))), "{filter}: {answer:?}");
    }
}
