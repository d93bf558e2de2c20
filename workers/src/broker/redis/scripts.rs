//! The Lua scripts of `workers/lua/` as the broker calls them, in one of two ways:
//!
//! - **As a Redis Function library** (Redis 7 and later; the usual way): every script a
//!   function of one library, `hopper_<hash of the code>`, after the shared helpers of
//!   `common.lua`, loaded with `FUNCTION LOAD REPLACE` when the broker connects (on every
//!   primary of a cluster) and called with `FCALL`. The helpers are built once, when the library
//!   loads, instead of before every call: ~60k Redis instructions a call, a third of what an
//!   idle fetch costs (callgrind, `docs/research/redis-layout-v2/README.md`). Libraries are
//!   named by their code, so nodes of two versions share a Redis during a rolling upgrade, each
//!   calling its own; a library is left behind when no node uses it any more (a few hundred
//!   KB in Redis' memory: `FUNCTION DELETE hopper_<hash>` removes it).
//! - **As scripts**, where Redis refuses `FUNCTION LOAD` (a Redis 6, or an ACL user denied the
//!   `FUNCTION` command): each script's source is `common.lua` then the script, loaded with
//!   `SCRIPT LOAD` and called with `EVALSHA`.
//!
//! Either way the call is the same: the queue's prefix and, on one Redis, the event clock as
//! keys, then the ARGV each caller adds; and a Redis that lost the code (a restart, `SCRIPT FLUSH`, `FUNCTION FLUSH`, a failover
//! to a node that never loaded it) has it loaded again and the call sent once more (`conn.rs`,
//! `cluster.rs`). It also owns the loop that runs a batch script until a call comes back
//! short. What a script does is written in its own header (KEYS, ARGV, returns); what its
//! reply means is `decode.rs`'s.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;

use redis::{Cmd, RedisError, Script};

use super::RedisBroker;
use super::conn::Shared;
use crate::error::BrokerResult;

/// Jobs per call of the batch scripts (retry_all_dead, rescue, purge, drop_queue, migrate).
pub(super) const BATCH: usize = 200;

/// The shared helpers every script starts with.
const COMMON: &str = include_str!("../../../lua/common.lua");

/// One script: its source and SHA1 as a script (`SCRIPT LOAD`, `EVALSHA`), and its name as a
/// function of [`Library`].
pub(super) struct Lua {
    code: String,
    hash: String,
    function: String,
}

impl Lua {
    pub(super) fn code(&self) -> &str {
        &self.code
    }
}

/// Every script as one Redis Function library (see the module docs).
pub(super) struct Library {
    pub(super) code: String,
}

/// Whether the reads a script makes may run while Redis is out of memory: a function
/// without the flag is refused whole then (`FUNCTION LOAD`'s rule), where an `EVALSHA`
/// script was refused only its writes. These read a job or a stream; a job still stored in
/// an old layout is rewritten on the way (a few bytes), which the flag allows.
const READS: &[&str] = &["get", "list", "trimmed"];

/// Declares every script once: a field of [`Scripts`] per file of `workers/lua/`, each
/// script's body after `common.lua`, and [`Scripts::all`] and [`LIBRARY`].
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

        /// (name, body) of every script.
        const BODIES: &[(&str, &str)] = &[
            $((stringify!($name), include_str!(concat!("../../../lua/", $file))),)*
        ];

        pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
            $($name: script(stringify!($name), include_str!(concat!("../../../lua/", $file))),)*
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

/// What names the library and its functions: the first 16 hex digits of the SHA1 of every
/// script's source, the same in every process built from the same code.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let all: String = BODIES
        .iter()
        .map(|(name, body)| format!("{name}\n{body}"))
        .collect();
    Script::new(&format!("{COMMON}{all}")).get_hash()[..16].to_owned()
});

fn function_name(script: &str) -> String {
    format!("hopper_{}_{script}", *VERSION)
}

fn script(name: &str, body: &str) -> Lua {
    let code = format!("{COMMON}begin(call_args())\n{body}");
    Lua {
        hash: Script::new(&code).get_hash().to_owned(),
        code,
        function: function_name(name),
    }
}

/// The library: `common.lua` once, then each script as the body of a function that binds
/// the call first (`begin`, see common.lua). `redis.register_function` is read before
/// common.lua shadows the name `redis` with the local it binds per call.
pub(super) static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let name = format!("hopper_{}", *VERSION);
    let mut code =
        format!("#!lua name={name}\nlocal register = redis.register_function\n{COMMON}\n");
    for (script, body) in BODIES {
        let flags = if READS.contains(script) {
            ", flags = { 'allow-oom' }"
        } else {
            ""
        };
        code.push_str(&format!(
            "register{{ function_name = '{}'{flags}, callback = function(KEYS, ARGV)\nbegin(KEYS, ARGV)\n{body}\nend }}\n",
            function_name(script)
        ));
    }
    Library { code }
});

/// Whether Redis no longer has a script or function (a restart, `SCRIPT FLUSH`, `FUNCTION
/// FLUSH`): load again and call again.
pub(super) fn is_noscript(e: &RedisError) -> bool {
    server_errors(e).any(|(code, detail)| {
        code == "NOSCRIPT" || (code == "ERR" && detail.starts_with("Function not found"))
    })
}

/// The code and detail of each error Redis answered in `e` (one, or a pipeline's).
fn server_errors(e: &RedisError) -> impl Iterator<Item = (String, String)> {
    e.clone().into_server_errors().into_iter().flat_map(|errs| {
        errs.iter()
            .map(|(_, s)| {
                (
                    s.code().to_owned(),
                    s.details().unwrap_or_default().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    })
}

impl RedisBroker {
    /// Loads the library (falling back to the scripts where Redis refuses it) in one
    /// round-trip; on a cluster, on every primary (see `cluster.rs`).
    pub(super) async fn load_scripts(&self) -> BrokerResult<()> {
        let res = match &self.conn {
            Shared::Single(conn) => load(&mut conn.clone(), self.functions()).await,
            Shared::Cluster(conn) => super::cluster::load_scripts(conn, self.functions()).await,
        };
        match res {
            Err(e) if self.functions() && refuses_functions(&e) => {
                tracing::info!(
                    url = %self.url,
                    error = %e,
                    "Redis refused FUNCTION LOAD: the broker calls its Lua code as scripts (EVALSHA)"
                );
                self.use_functions.store(false, Ordering::Relaxed);
                let res = match &self.conn {
                    Shared::Single(conn) => load(&mut conn.clone(), false).await,
                    Shared::Cluster(conn) => super::cluster::load_scripts(conn, false).await,
                };
                res.map_err(|e| self.err(e))
            }
            res => res.map_err(|e| self.err(e)),
        }
    }

    /// Whether the broker calls its code as functions (`FCALL`) rather than scripts.
    pub(super) fn functions(&self) -> bool {
        self.use_functions.load(Ordering::Relaxed)
    }

    /// `FCALL <function> 2 <queue prefix> <event clock>` (or `EVALSHA <script> …`; on a
    /// cluster only the queue's prefix, as no script may touch a key of another slot; see
    /// `common.lua`'s entry ids); the caller adds the ARGV.
    pub(super) fn eval(&self, script: &Lua, queue: &str) -> Cmd {
        let mut cmd = if self.functions() {
            let mut cmd = redis::cmd("FCALL");
            cmd.arg(&script.function);
            cmd
        } else {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&script.hash);
            cmd
        };
        if self.is_cluster() {
            cmd.arg(1).arg(self.base(queue));
        } else {
            cmd.arg(2).arg(self.base(queue)).arg(self.event_clock_key());
        }
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

/// Loads the library, or every script, on one connection.
async fn load(
    conn: &mut impl redis::aio::ConnectionLike,
    functions: bool,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    if functions {
        pipe.cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(&LIBRARY.code)
            .ignore();
    } else {
        for s in SCRIPTS.all() {
            pipe.cmd("SCRIPT").arg("LOAD").arg(s.code()).ignore();
        }
    }
    pipe.query_async::<()>(conn).await
}

/// Whether Redis said it does not take `FUNCTION LOAD` at all (an older Redis, an ACL user
/// denied it), rather than failed it (a broken library must fail the connect, not hide
/// behind the scripts).
fn refuses_functions(e: &RedisError) -> bool {
    server_errors(e).any(|(code, detail)| {
        let detail = detail.to_ascii_lowercase();
        code == "NOPERM"
            || detail.contains("unknown command")
            || detail.contains("unknown subcommand")
    })
}
