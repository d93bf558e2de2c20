//! Redis for the tests: the shared Redis of CI on 127.0.0.1:6379 with a key prefix of a
//! test's own ([`RedisKeys`]), the same on the Redis Cluster of CI on 127.0.0.1:7101-7103
//! ([`ClusterKeys`]), and `redis-server`s a test runs itself ([`RedisServer`]),
//! plain with AOF or speaking only TLS. Redis is driven with `redis-cli`, as an operator would.
//!
//! It does not start `hopper`; a test points a [`super::Scratch`] config at these URLs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::wait;

/// The port of the shared Redis of CI.
pub const SHARED_PORT: u16 = 6379;
/// The URL of the shared Redis of CI, db 0.
pub const SHARED_URL: &str = "redis://127.0.0.1:6379/0";

/// Runs `redis-cli` against db 0 of the Redis on `port`.
pub fn redis_cli(port: u16, args: &[&str]) -> Output {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-n", "0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli (is it installed?): {e}"))
}

/// `PING` on `port`: `Ok` on `PONG`, else what was answered.
fn ping(port: u16) -> Result<(), String> {
    let out = redis_cli(port, &["PING"]);
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && said == "PONG" {
        Ok(())
    } else {
        Err(format!(
            "{said} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A port the kernel just handed out on loopback (bound to 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A key prefix no other test (or earlier run) uses.
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t-{}-{:x}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A unique key prefix on the shared Redis; every key containing it is deleted on drop, so a
/// failed test leaves nothing behind either. Keys look like `{<prefix>:<queue>}:...`,
/// `<prefix>:queues` and `<prefix>:jobq`.
pub struct RedisKeys {
    pub prefix: String,
}

impl RedisKeys {
    /// Fails the test at once, saying why, when the shared Redis does not answer.
    pub fn claim() -> Self {
        if let Err(said) = ping(SHARED_PORT) {
            panic!(
                "these tests need a Redis on 127.0.0.1:{SHARED_PORT} (CI starts one; locally \
                 run `redis-server`), but PING answered: {said}"
            );
        }
        Self {
            prefix: unique_prefix(),
        }
    }

    fn list(&self) -> Vec<String> {
        let pattern = format!("*{}*", self.prefix);
        let out = redis_cli(SHARED_PORT, &["--scan", "--pattern", &pattern]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The members of the set `<prefix>:<name>`, sorted.
    pub fn members(&self, name: &str) -> Vec<String> {
        let out = redis_cli(
            SHARED_PORT,
            &["SMEMBERS", &format!("{}:{name}", self.prefix)],
        );
        let mut members: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        members.sort();
        members
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let keys = self.list();
        for chunk in keys.chunks(500) {
            let mut args = vec!["DEL"];
            args.extend(chunk.iter().map(String::as_str));
            let _ = redis_cli(SHARED_PORT, &args);
        }
        let left = self.list();
        if !left.is_empty() && !std::thread::panicking() {
            panic!(
                "keys of prefix {} left after cleanup: {left:?}",
                self.prefix
            );
        }
    }
}

/// The first node of the Redis Cluster of CI (`.ci/run` starts 7101-7103).
pub const CLUSTER_SEED_PORT: u16 = 7101;
/// The URL of the Redis Cluster of CI.
pub const CLUSTER_URL: &str = "redis-cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// A unique key prefix on the Redis Cluster of CI; every key containing it is deleted from
/// every primary on drop, as [`RedisKeys`] does on the shared Redis.
pub struct ClusterKeys {
    pub prefix: String,
}

impl ClusterKeys {
    /// Fails the test at once, saying why, when the cluster is not up.
    pub fn claim() -> Self {
        let out = redis_cli(CLUSTER_SEED_PORT, &["CLUSTER", "INFO"]);
        let said = String::from_utf8_lossy(&out.stdout);
        if !said.contains("cluster_state:ok") {
            panic!(
                "these tests need a Redis Cluster on 127.0.0.1:{CLUSTER_SEED_PORT}-7103 (.ci/run \
                 starts one), but CLUSTER INFO answered: {said} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self {
            prefix: unique_prefix(),
        }
    }

    /// The ports of the cluster's primaries.
    fn primaries() -> Vec<u16> {
        let out = redis_cli(CLUSTER_SEED_PORT, &["CLUSTER", "NODES"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let mut parts = line.split(' ');
                let addr = parts.nth(1)?;
                let flags = parts.next()?;
                let port = addr.split('@').next()?.rsplit_once(':')?.1;
                flags
                    .contains("master")
                    .then(|| port.parse().ok())
                    .flatten()
            })
            .collect()
    }

    fn list(port: u16, prefix: &str) -> Vec<String> {
        let pattern = format!("*{prefix}*");
        let out = redis_cli(port, &["--scan", "--pattern", &pattern]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for ClusterKeys {
    fn drop(&mut self) {
        let mut left = Vec::new();
        for port in Self::primaries() {
            let keys = Self::list(port, &self.prefix);
            // One key per command (a node refuses a multi-key UNLINK across slots), all in
            // one `redis-cli` reading them from stdin.
            let script: String = keys.iter().map(|k| format!("UNLINK {k}\n")).collect();
            if let Ok(mut child) = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
            {
                if let Some(mut stdin) = child.stdin.take() {
                    use std::io::Write;
                    let _ = stdin.write_all(script.as_bytes());
                }
                let _ = child.wait();
            }
            left.extend(Self::list(port, &self.prefix));
        }
        if !left.is_empty() && !std::thread::panicking() {
            panic!(
                "keys of prefix {} left after cleanup: {left:?}",
                self.prefix
            );
        }
    }
}

/// A `redis-server` of a test's own on a free loopback port, in a temporary directory. Killed
/// when dropped; its log is printed when that happens during a panic.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    tls: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain server with AOF on, fsync every second.
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), false)
    }

    /// A server speaking only TLS, with a certificate for 127.0.0.1 signed by a test CA
    /// ([`RedisServer::ca`]); no persistence.
    pub fn start_tls() -> Self {
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        Self::start_in(dir, true)
    }

    fn start_in(dir: tempfile::TempDir, tls: bool) -> Self {
        let mut server = Self {
            port: free_port(),
            dir,
            tls,
            child: None,
        };
        server.launch();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// The certificate of the CA that signed a TLS server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--bind".into(), "127.0.0.1".into()];
        let port = self.port.to_string();
        if self.tls {
            let file = |name: &str| self.dir.path().join(name).into_os_string();
            args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.into(),
            ]);
            args.extend(["--tls-cert-file".into(), file("cert.pem")]);
            args.extend(["--tls-key-file".into(), file("key.pem")]);
            args.extend(["--tls-ca-cert-file".into(), file("ca.pem")]);
            args.extend(["--tls-auth-clients", "no", "--appendonly", "no"].map(OsString::from));
        } else {
            args.extend(["--port".into(), port.into()]);
            args.extend(["--appendonly", "yes", "--appendfsync", "everysec"].map(OsString::from));
        }
        args.extend(["--save".into(), "".into()]);
        args.extend(["--dir".into(), self.dir.path().into()]);
        args.extend(["--logfile".into(), self.log().into_os_string()]);
        args
    }

    /// Starts the server on its port and directory and waits until it answers: PING, or for
    /// TLS (which `redis-cli` may not speak), a TCP connection.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let child = Command::new("redis-server")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        self.child = Some(child);
        let what = format!("redis-server on port {} never answered", self.port);
        wait::until_blocking(&what, || {
            let answered = if self.tls {
                std::net::TcpStream::connect(("127.0.0.1", self.port))
                    .map(drop)
                    .map_err(|e| e.to_string())
            } else {
                ping(self.port)
            };
            answered.map_err(|e| {
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                format!("{e}; its log:\n{log}")
            })
        });
    }

    /// `SHUTDOWN` (which, with AOF on, fsyncs the AOF first) and waits for the process to end.
    pub fn shutdown(&mut self) {
        let _ = redis_cli(self.port, &["SHUTDOWN"]);
        let mut child = self.child.take().unwrap();
        wait::until_blocking("redis-server did not exit after SHUTDOWN", || {
            child
                .try_wait()
                .unwrap()
                .map(drop)
                .ok_or_else(|| "running".to_owned())
        });
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server log ----\n{}\n----",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
        }
    }
}

/// Writes into `dir` a test CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it
/// (`cert.pem`, `key.pem`), with `openssl`.
fn make_certificates(dir: &std::path::Path) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let openssl = |args: &str| {
        let st = Command::new("openssl")
            .current_dir(dir)
            .args(args.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run openssl to make test certificates: {e}"));
        assert!(st.success(), "openssl {args}");
    };
    openssl(
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=hopper-test-ca \
         -keyout ca.key -out ca.pem",
    );
    openssl("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out server.csr");
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
         -extfile ext.cnf -out cert.pem",
    );
}
