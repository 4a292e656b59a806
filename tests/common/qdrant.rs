//! A real Qdrant server — the one shipped in `../shared/qdrant` (`qdrant.sh` unpacks it) — on
//! free loopback ports with its own storage folder: what the remote-store suite
//! (`core/tests/store.rs`) and the end-to-end tests over `mrl serve --qdrant-url` share.
//! It can be killed and started again on the same ports and storage; on drop it is killed and
//! its storage removed. It panics with the reason when the server cannot start: those tests
//! must not pass without the real engine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct QdrantServer {
    child: Option<Child>,
    bin: String,
    dir: PathBuf,
    http: u16,
    grpc: u16,
    /// Cluster mode: this node's peer-to-peer port and the first node's p2p URI (`None`
    /// for the first node itself).
    cluster: Option<(u16, Option<String>)>,
}

/// The folder of the crate whose test is running: cargo's run-time `CARGO_MANIFEST_DIR` (a
/// test binary reused from another checkout of the same sources, through a shared target
/// dir, carries that checkout's path), else the one it was built with.
pub fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// `$MRL_SHARED_DIR`, else the `shared/` folder beside the checkout whose root is
/// `workspace_root`: where the data, fixtures and the Qdrant server live.
pub fn shared_dir(workspace_root: &Path) -> PathBuf {
    std::env::var_os("MRL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join("..").join("shared"))
}

/// The shared folder ([`shared_dir`]) when it holds every one of `rels` (data sets, fixtures,
/// `qdrant`). When it does not, a test that needs them says so in one line and is skipped
/// (`None`: the caller returns), except under `CI=true`, where a missing `../shared` is a
/// failure: CI must never skip silently.
pub fn needs_shared(workspace_root: &Path, rels: &[&str]) -> Option<PathBuf> {
    let shared = shared_dir(workspace_root);
    let missing: Vec<String> = rels
        .iter()
        .map(|r| shared.join(r))
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some(shared);
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    let missing = missing.join(", ");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {missing} missing, and under CI=true no test skips (set MRL_SHARED_DIR)"
    );
    // Straight to the process's stderr: the test harness captures eprintln! of a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {test}: needs {missing} (set MRL_SHARED_DIR)"
    );
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl QdrantServer {
    /// Unpacks the binary from `shared/qdrant`, starts it and waits for `/healthz`.
    pub fn start(shared: &Path) -> Self {
        let mut server = Self::prepare(shared, None);
        server.restart();
        server
    }

    /// A cluster of `n` nodes on loopback (cluster mode, the first bootstraps the others),
    /// returned once every node answers and the first sees all `n` peers.
    pub fn start_cluster(shared: &Path, n: usize) -> Vec<Self> {
        let mut nodes: Vec<Self> = Vec::with_capacity(n);
        for i in 0..n {
            let first = nodes.first().map(|f| f.p2p_uri());
            let mut node = Self::prepare(shared, Some((free_port(), first)));
            node.restart();
            if i == 0 {
                // Later nodes join through it.
                std::thread::sleep(Duration::from_millis(500));
            }
            nodes.push(node);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let peers = nodes[0].get("/cluster")["result"]["peers"]
                .as_object()
                .map_or(0, |p| p.len());
            if peers == n {
                return nodes;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster has {peers} of {n} peers after 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn p2p_uri(&self) -> String {
        let (p2p, _) = self.cluster.as_ref().expect("a cluster node");
        format!("http://127.0.0.1:{p2p}")
    }

    fn prepare(shared: &Path, cluster: Option<(u16, Option<String>)>) -> Self {
        let script = shared.join("qdrant").join("qdrant.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mrl-qdrant-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            child: None,
            bin: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            dir,
            http: free_port(),
            grpc: free_port(),
            cluster,
        }
    }

    /// The gRPC address the store connects to.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// `GET path` on the server's REST API: the body as JSON (what Qdrant itself reports,
    /// to check what a client asked for was applied).
    pub fn get(&self, path: &str) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.http)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {answer}"))
    }

    /// The server process's id (`None` while it is killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The folder of its storage, snapshots and working files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILL; the storage stays for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same ports and storage and waits for `/healthz` and
    /// for the gRPC port (REST can answer before gRPC listens: seen under load).
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(&self.bin);
        if let Some((p2p, first)) = &self.cluster {
            cmd.env("QDRANT__CLUSTER__ENABLED", "true")
                .env("QDRANT__CLUSTER__P2P__PORT", p2p.to_string())
                .args(["--uri", &format!("http://127.0.0.1:{p2p}")]);
            if let Some(first) = first {
                cmd.args(["--bootstrap", first]);
            }
        }
        let child = cmd
            .current_dir(&self.dir)
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", self.http.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc.to_string())
            .env("QDRANT__STORAGE__STORAGE_PATH", self.dir.join("storage"))
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                self.dir.join("snapshots"),
            )
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin));
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the Qdrant server {} exited at start: {status}", self.bin);
            }
            if healthy(self.http) && TcpStream::connect(("127.0.0.1", self.grpc)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Qdrant server {} did not answer /healthz and gRPC within 60 s",
                self.bin
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn healthy(http: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", http)) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
