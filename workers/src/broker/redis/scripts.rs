//! The Lua scripts of `workers/lua/` as the broker calls them: each one compiled into the
//! binary with the shared helpers of `common.lua` in front, loaded with `SCRIPT LOAD` when the
//! broker connects (on every node of a cluster; and again when Redis says `NOSCRIPT`, see
//! `conn.rs` and `cluster.rs`), and called with
//! `EVALSHA` on one queue's key prefix.
//!
//! It owns the calling convention (one key, the queue's prefix; the ARGV each caller adds) and
//! the loop that runs a batch script until a call comes back short. What a script does is
//! written in its own header (KEYS, ARGV, returns); what its reply means is `decode.rs`'s.

use std::sync::LazyLock;

use redis::{Cmd, RedisError, Script};

use super::RedisBroker;
use super::conn::Shared;
use crate::error::BrokerResult;

/// Jobs per call of the batch scripts (retry_all_dead, rescue, purge, drop_queue, migrate).
pub(super) const BATCH: usize = 200;

/// One script: its source (for `SCRIPT LOAD`) and SHA1 (for `EVALSHA`).
pub(super) struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    pub(super) fn code(&self) -> &'static str {
        self.code
    }

    fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: Script::new(code).get_hash().to_owned(),
        }
    }
}

/// Declares every script once: a field of [`Scripts`] per file of `workers/lua/` (its source
/// the shared helpers of `common.lua` followed by the script itself), and [`Scripts::all`].
macro_rules! scripts {
    ($($name:ident: $file:literal,)*) => {
        pub(super) struct Scripts {
            $(pub(super) $name: Lua,)*
        }

        impl Scripts {
            pub(super) fn all(&self) -> Vec<&Lua> {
                vec![$(&self.$name),*]
            }
        }

        pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
            $($name: Lua::new(concat!(
                include_str!("../../../lua/common.lua"),
                include_str!(concat!("../../../lua/", $file))
            )),)*
        });
    };
}

scripts! {
    enqueue: "enqueue.lua",
    enqueue_plain: "enqueue_plain.lua",
    fetch: "fetch.lua",
    finish: "finish.lua",
    heartbeat: "heartbeat.lua",
    progress: "progress.lua",
    checkpoint: "checkpoint.lua",
    cancel: "cancel.lua",
    retry: "retry.lua",
    retry_all_dead: "retry_all_dead.lua",
    rescue: "rescue.lua",
    purge: "purge.lua",
    drop_queue: "drop_queue.lua",
    list: "list.lua",
    inbox_append: "inbox_append.lua",
    migrate: "migrate.lua",
    get: "get.lua",
    trimmed: "trimmed.lua",
}

/// Whether Redis no longer has a script (a restart, `SCRIPT FLUSH`): reload and call again.
pub(super) fn is_noscript(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

impl RedisBroker {
    /// Loads every script in one round-trip (on a cluster, on every node: see `cluster.rs`).
    pub(super) async fn load_scripts(&self) -> BrokerResult<()> {
        match &self.conn {
            Shared::Single(conn) => {
                let mut pipe = redis::pipe();
                for s in SCRIPTS.all() {
                    pipe.cmd("SCRIPT").arg("LOAD").arg(s.code).ignore();
                }
                let mut conn = conn.clone();
                pipe.query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| self.err(e))
            }
            Shared::Cluster(conn) => super::cluster::load_scripts(conn)
                .await
                .map_err(|e| self.err(e)),
        }
    }

    /// `EVALSHA <script> 1 <queue prefix>`; the caller adds the ARGV.
    pub(super) fn eval(&self, script: &Lua, queue: &str) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.hash).arg(1).arg(self.base(queue));
        cmd
    }

    /// Runs `script` on `queue` until a call handles fewer than [`BATCH`] jobs; returns the ids
    /// the calls returned.
    pub(super) async fn drain_batches(
        &self,
        script: &Lua,
        queue: &str,
        args: &[String],
    ) -> BrokerResult<Vec<String>> {
        let mut all = Vec::new();
        loop {
            let mut cmd = self.eval(script, queue);
            cmd.arg(args);
            let ids: Vec<String> = self.query(&cmd).await?;
            let n = ids.len();
            all.extend(ids);
            if n < BATCH {
                return Ok(all);
            }
        }
    }
}
