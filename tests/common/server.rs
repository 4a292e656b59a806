//! `mrl serve` as a separate process on a free port, driven over plain HTTP/1.1: what the
//! end-to-end tests of collections and of hardening share.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// `mrl serve` on a free port over `data`, any dim allowed.
    pub fn start(data: &Path) -> Self {
        Self::start_with(data, &[])
    }

    /// As `start`, with more `mrl serve` arguments.
    pub fn start_with(data: &Path, args: &[&str]) -> Self {
        Self::start_plain(data, &[&["--allow-any-dim"], args].concat())
    }

    /// `mrl serve` on a free port over `data` with only `args` (the server's own defaults
    /// otherwise: nested dims only).
    pub fn start_plain(data: &Path, args: &[&str]) -> Self {
        let mut cmd = Self::command(data);
        cmd.args(args)
            .env("MRL_MODEL", super::model_dir())
            .stderr(Stdio::null());
        Self::launch(cmd)
    }

    /// `mrl serve --port 0 --data-dir data`, to be given more arguments, an environment or a
    /// working folder, then [`launch`](Self::launch)ed.
    pub fn command(data: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mrl"));
        cmd.args(["serve", "--port", "0", "--data-dir"]).arg(data);
        cmd
    }

    /// Spawns `cmd` (an `mrl serve` command) and waits for its `listening on` line.
    pub fn launch(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting mrl serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    /// One request on its own connection: the status and the body as JSON (`Null` when the
    /// body is not JSON).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(self.addr, method, path, body)
    }

    pub fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, v) = self.call(method, path, Some(body));
        assert!(
            status == 200 || status == 201,
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Stores `(id, text)` documents in `collection` (one request; asserts it succeeded).
    pub fn add_documents(&self, collection: &str, docs: &[(String, String)]) {
        let batch: Vec<Value> = docs
            .iter()
            .map(|(id, t)| serde_json::json!({"id": id, "text": t}))
            .collect();
        self.ok(
            "POST",
            &format!("/collections/{collection}/documents"),
            serde_json::json!({ "documents": batch }),
        );
    }

    /// The server's stderr, where `cmd` piped it before [`launch`](Self::launch).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM: actix stops gracefully and the store closes. Returns how the process ended.
    pub fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    /// A test that fails midway leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request to `addr` on its own connection: the status and the body as JSON (`Null` when
/// the body is not JSON).
pub fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, text) = raw(addr, method, path, body.as_bytes());
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One request of raw `body` bytes to `addr` on its own connection: the status and the body
/// as text. Panics when no HTTP answer comes back (the server dropped the connection).
pub fn raw(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    // The server may answer (4xx) before reading the whole body; a reset write is fine.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP response in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {head:?}"));
    (status, body.to_string())
}
