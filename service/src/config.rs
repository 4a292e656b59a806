//! Server settings: address, authentication, request limits and batching.

/// Settings of `mrl serve`; `new()` gives the defaults, setters change them.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Where the embedded store keeps its collections.
    pub data_dir: std::path::PathBuf,
    /// A Qdrant server's gRPC address; when set it replaces the embedded store.
    pub qdrant_url: Option<String>,
    pub qdrant_api_key: Option<String>,
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// Bearer token required on every route but `/health`.
    pub api_key: Option<String>,
    /// Accept any prefix size, not only the checkpoint's nested dims.
    pub allow_any_dim: bool,
    /// Token budget of one model batch.
    pub max_batch_tokens: usize,
    /// Requests waiting for the model before new ones get 429.
    pub queue_capacity: usize,
    /// Token ids waiting for the model (summed over waiting requests) before new requests get
    /// 429; a single larger request still runs when nothing waits.
    pub max_queued_tokens: usize,
    /// Texts per request.
    pub max_inputs: usize,
    /// Bytes per request body.
    pub max_body_bytes: usize,
    /// Inputs longer than the model's limit are truncated (true) or rejected with 413.
    pub truncate: bool,
    /// HTTP worker threads (the model has its own thread).
    pub workers: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        // Dims, truncation and texts per request are the core's server policy, stated there.
        let policy = mrl_core::Policy::SERVER;
        Self {
            data_dir: "data".into(),
            qdrant_url: None,
            qdrant_api_key: None,
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            allow_any_dim: policy.dims == mrl_core::DimPolicy::AnyPrefix,
            max_batch_tokens: 16_384,
            queue_capacity: 64,
            max_queued_tokens: 65_536,
            max_inputs: policy.max_inputs.unwrap_or(usize::MAX),
            max_body_bytes: 4 << 20,
            truncate: policy.truncate,
            workers: 2,
        }
    }
}

impl ServeConfig {
    pub fn new() -> Self {
        Self::default()
    }

    /// The core's policy these settings ask for (dims, truncation, texts per request).
    pub fn policy(&self) -> mrl_core::Policy {
        mrl_core::Policy {
            dims: mrl_core::DimPolicy::any_if(self.allow_any_dim),
            truncate: self.truncate,
            max_inputs: Some(self.max_inputs),
        }
    }
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }
    pub fn qdrant(mut self, url: Option<String>, api_key: Option<String>) -> Self {
        self.qdrant_url = url.filter(|u| !u.is_empty());
        self.qdrant_api_key = api_key.filter(|k| !k.is_empty());
        self
    }
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    pub fn api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty());
        self
    }
    pub fn allow_any_dim(mut self, allow: bool) -> Self {
        self.allow_any_dim = allow;
        self
    }
    pub fn max_batch_tokens(mut self, n: usize) -> Self {
        self.max_batch_tokens = n;
        self
    }
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }
    pub fn max_queued_tokens(mut self, n: usize) -> Self {
        self.max_queued_tokens = n;
        self
    }
    pub fn max_inputs(mut self, n: usize) -> Self {
        self.max_inputs = n;
        self
    }
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }
    pub fn truncate(mut self, truncate: bool) -> Self {
        self.truncate = truncate;
        self
    }
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }
}
