//! Progress coalescing, through a real pool over the broker under test: a handler may report
//! progress as often as it likes, but at most about ten `job.progress` events per second per
//! job reach the log, and the last report before the job's state changes is always there,
//! before that change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;

use super::pool::{config, job_until, start};
use super::{ManualClock, enqueue, job};
use crate::broker::Broker;
use crate::event::EventType;
use crate::handler::{Handler, JobContext, JobResult, Registry};
use crate::job::JobState;

/// Reports progress 1,000 times over about a second, then 100 with a message, and returns
/// at once; says how long the reporting took.
struct Chatty {
    took: Arc<std::sync::Mutex<Option<Duration>>>,
}

#[async_trait]
impl Handler for Chatty {
    async fn run(&self, cx: JobContext) -> JobResult {
        let began = Instant::now();
        for i in 0..100u32 {
            for j in 0..10u32 {
                let n = i * 10 + j;
                cx.progress(u8::try_from(n / 10).unwrap_or(99), format!("step {n}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cx.progress(100, "done".to_owned());
        if let Ok(mut took) = self.took.lock() {
            *took = Some(began.elapsed());
        }
        Ok(json!({"ok": true}))
    }
}

/// 1,000 progress reports in about a second make at most about ten `job.progress` events a
/// second, and the last report (100, "done") is in the history right before `job.succeeded`.
pub async fn pool_coalesces_progress_and_keeps_the_last_report(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let took = Arc::new(std::sync::Mutex::new(None));
    let mut r = Registry::new();
    r.register("test.chatty", Chatty { took: took.clone() })
        .expect("one kind");
    let pool = start(b.clone(), Arc::new(r), config(), &clock);
    let id = enqueue(&b, job("test.chatty")).await;
    job_until(&b, &id, "the chatty job to succeed", |j| {
        j.state == JobState::Succeeded
    })
    .await;
    pool.stop().await;

    let took = took.lock().ok().and_then(|t| *t).expect("the handler ran");
    let history = b.history(&id).await.expect("history");
    let progress: Vec<_> = history
        .iter()
        .filter(|e| e.kind_of_event == EventType::Progress)
        .collect();
    // One write per 100 ms tick while the handler reports, plus the final flush.
    let bound = usize::try_from(took.as_millis() / 100).unwrap_or(usize::MAX) + 2;
    assert!(
        progress.len() <= bound,
        "{} progress events for {took:?} of reports (at most {bound})",
        progress.len()
    );
    assert!(
        progress.len() >= 2,
        "progress is written while the job runs"
    );
    let n = history.len();
    assert!(n >= 2, "{history:?}");
    assert_eq!(
        history[n - 1].kind_of_event,
        EventType::Succeeded,
        "{history:?}"
    );
    let last = &history[n - 2];
    assert_eq!(last.kind_of_event, EventType::Progress, "{history:?}");
    assert_eq!(last.progress, Some(100));
    assert_eq!(last.message.as_deref(), Some("done"));
    let reported: Vec<u8> = progress.iter().filter_map(|e| e.progress).collect();
    assert!(
        reported.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {reported:?}"
    );
}
