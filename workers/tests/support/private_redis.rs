//! A `redis-server` of a test's own, on a free port: for the tests that stop, flush or
//! reconfigure their Redis, which they must not do to the one every other test shares.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long the server may take to answer its first `PING` on a loaded machine.
const STARTUP: Duration = Duration::from_secs(60);

/// A `redis-server` of this test's own, killed when dropped.
pub struct Server {
    child: Child,
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl Server {
    #[allow(dead_code)]
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server started with `args` besides the defaults (`--cluster-enabled yes`, ...).
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let child = spawn(port, &args, dir.path());
        let server = Self {
            child,
            port,
            args,
            dir,
        };
        server.wait_up();
        server
    }

    /// Kills the server (`SIGKILL`) and starts it again on its port, with its directory (a
    /// cluster node comes back as itself, from its `nodes.conf`).
    #[allow(dead_code)]
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again a server [`Self::kill`]ed, on its port, with its directory.
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        self.child = spawn(self.port, &self.args, self.dir.path());
        self.wait_up();
    }

    fn wait_up(&self) {
        let deadline = std::time::Instant::now() + STARTUP;
        loop {
            let pong = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on port {} never answered: {pong:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`.
    #[allow(dead_code)]
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A plain connection to it, for the test's own commands.
    #[allow(dead_code)]
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("a connection to the private redis-server")
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    #[allow(dead_code)]
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }
}

/// A Redis Cluster of this test's own: three primaries, no replicas, a node declared failed
/// after 1 s unreachable (a test can stop one and see the cluster fail).
#[allow(dead_code)]
pub struct Cluster {
    pub nodes: Vec<Server>,
}

#[allow(dead_code)]
impl Cluster {
    #[allow(dead_code)]
    pub fn start() -> Self {
        let nodes: Vec<Server> = (0..3)
            .map(|_| {
                Server::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                ])
            })
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(Server::addr))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes };
        // Each node learns of the others in its own time: every one must say ok.
        for i in 0..cluster.nodes.len() {
            cluster.wait_state(i, "ok");
        }
        cluster
    }

    /// `redis-cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(Server::addr).collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    /// Waits until node `i` says `cluster_state:STATE`.
    pub fn wait_state(&self, i: usize, state: &str) {
        let want = format!("cluster_state:{state}");
        let deadline = std::time::Instant::now() + STARTUP;
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut self.nodes[i].conn())
                .unwrap_or_default();
            if info.lines().any(|l| l.trim() == want) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {i} never said {want}: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn spawn(port: u16, args: &[String], dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"))
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port whose cluster bus port (the port + 10000, which a cluster node listens on too)
/// exists and is free as well: a node on a port above 55535 refuses to start, and the
/// kernel hands out ports up to 60999.
fn free_port() -> u16 {
    for _ in 0..1000 {
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            continue;
        };
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free port with a free cluster bus port after 1000 tries");
}
