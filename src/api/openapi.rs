//! The API's OpenAPI 3.1 document (`GET /openapi.json`) and Swagger UI (`GET /docs`).
//!
//! The document is generated, not written: each handler carries a `#[utoipa::path]`
//! annotation (its parameters, body and the statuses only it answers), and `super::routes`
//! registers every API route through `utoipa_axum`'s `routes!`, so the router and the
//! document come from one list. [`finish`] then adds what every operation shares, from the
//! layers rather than the handlers: the bearer token on `/v1`, 401 there, 413 where a body is
//! read, 400 where a path parameter may not decode, 503 (broker down, request timeout) and 500
//! everywhere.
//!
//! This module also owns the schemas of the wire shapes. `Job`, `Event` and the queue stats
//! are `hopper-workers` types, which cannot implement utoipa's traits here, so they are
//! mirrored by schema-only types; a test compares each mirror's properties with what the real
//! type serializes. It does not own the handlers or the error type (`super::error`).
//!
//! Both routes need no token, like `/healthz` and the dashboard: they describe the API and
//! hold no data. Swagger UI's assets are embedded (`utoipa-swagger-ui`'s `vendored` copy);
//! nothing is fetched at build or run time.

use axum::Router;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};
use utoipa::{IntoParams, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";
/// Where Swagger UI is served.
pub const UI_PATH: &str = "/docs";

/// The security scheme of `Authorization: Bearer TOKEN`.
pub const BEARER: &str = "bearer";
/// The security scheme of `?token=TOKEN` (`GET /v1/events` only).
pub const QUERY_TOKEN: &str = "query_token";

/// The document's fixed part; the paths come from the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Hopper",
        description = "A durable job queue. Every error is JSON `{\"error\": {\"code\", \
                       \"message\", \"field\"?}}`: `code` is stable, `message` is for people, \
                       `field` names the request field at fault. With `[auth] tokens` set, \
                       every `/v1` route needs `Authorization: Bearer TOKEN`."
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "jobs", description = "Enqueue, list, inspect, retry and cancel jobs"),
        (name = "queues", description = "Queue statistics and controls"),
        (name = "workers", description = "The worker nodes serving the queues"),
        (name = "events", description = "The live, resumable stream of job events"),
        (name = "bus", description = "Publish an event: one job per matching subscription"),
        (name = "notifications", description = "Users' notifications (WebSocket, JWT) and Web Push subscriptions"),
        (name = "health", description = "Liveness and readiness probes"),
    )
)]
pub struct ApiDoc;

/// Adds what the layers around the handlers answer to every operation of `doc` (see the
/// module docs), and the security schemes.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            utoipa::openapi::security::Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("One of `[auth] tokens` (or `HOPPER_TOKENS`)"))
                .build(),
        ),
    );
    components.add_security_scheme(
        QUERY_TOKEN,
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("token"))),
    );
    for (name, description) in SHARED_RESPONSES {
        components
            .responses
            .insert((*name).to_owned(), RefOr::T(error_response(description)));
    }
    for (path, item) in &mut doc.paths.paths {
        let under_v1 = path.starts_with("/v1/");
        let path_params = path.contains('{');
        for op in [&mut item.get, &mut item.post, &mut item.delete]
            .into_iter()
            .flatten()
        {
            add_shared(op, under_v1, path_params);
        }
    }
    doc
}

/// The responses every operation may give, by the layers: name and description.
const SHARED_RESPONSES: &[(&str, &str)] = &[
    (
        "Unauthorized",
        "`unauthorized`: the server has `[auth] tokens` and the request carries none of them",
    ),
    (
        "RateLimited",
        "`rate_limited`: more requests than `[server] rate_limit` allows this client (its \
         token, or its address without auth); the `Retry-After` header says in how many seconds \
         to try again",
    ),
    (
        "InvalidPath",
        "`invalid_request`: a path parameter that is not UTF-8 once percent-decoded (`%FF`)",
    ),
    (
        "PayloadTooLarge",
        "`payload_too_large`: the body is larger than `[server] body_limit`",
    ),
    (
        "Unavailable",
        "`broker_unavailable`: the broker does not answer; `timeout`: the request took longer \
         than 30 s",
    ),
    (
        "Internal",
        "`internal`: a failure the client cannot fix; the server log has the detail under the \
         `error_id` the message gives",
    ),
];

fn error_response(description: &str) -> Response {
    Response::builder()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
}

fn add_shared(op: &mut Operation, under_v1: bool, path_params: bool) {
    let responses = &mut op.responses.responses;
    let mut add = |status: &str, name: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    };
    if under_v1 {
        add("401", "Unauthorized");
        add("429", "RateLimited");
    }
    if op.request_body.is_some() {
        add("413", "PayloadTooLarge");
    }
    // axum refuses a path parameter it cannot decode before any handler runs; a route that
    // documents a 400 of its own keeps its description.
    if path_params {
        add("400", "InvalidPath");
    }
    add("503", "Unavailable");
    add("500", "Internal");
    if under_v1 && op.security.is_none() {
        let bearer =
            utoipa::openapi::security::SecurityRequirement::new(BEARER, Vec::<String>::new());
        op.security = Some(vec![bearer]);
    }
}

/// `GET /openapi.json` and Swagger UI at `GET /docs`.
pub fn router<S: Clone + Send + Sync + 'static>(doc: OpenApi) -> Router<S> {
    SwaggerUi::new(UI_PATH).url(DOCUMENT_PATH, doc).into()
}

// ---- Schemas: the error shape ----------------------------------------------------------------

/// Every error the API answers: `{"error": {"code", "message", "field"?}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `invalid_json`, `invalid_body`, `invalid_field`,
    /// `missing_field`, `unknown_field`, `invalid_parameter`, `invalid_query`, `unknown_kind`,
    /// `not_found`, `conflict`, `unauthorized`, `payload_too_large`, `method_not_allowed`,
    /// `too_many_connections`, `stopping`, `broker_unavailable`, `timeout`, `internal`,
    /// `invalid_request` (a path or query axum could not read, e.g. not UTF-8), and `error`
    /// for any other status.
    pub code: String,
    /// For people; may change.
    pub message: String,
    /// The request field (or query parameter, path segment, header) at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub field: Option<String>,
}

// ---- Schemas: mirrors of the engine's wire types -----------------------------------------------

/// A job's state.
#[derive(Serialize, ToSchema)]
#[schema(as = JobState)]
#[serde(rename_all = "lowercase")]
pub enum JobStateDoc {
    Waiting,
    Scheduled,
    Queued,
    Running,
    Retrying,
    Succeeded,
    Dead,
    Cancelled,
}

/// A job's place in a chain.
#[derive(Serialize, ToSchema)]
#[schema(as = ChainLink)]
pub struct ChainLinkDoc {
    /// The chain's id: the id of its first step.
    pub id: String,
    /// This step's position, from 0.
    pub index: u32,
    /// The step after this one; absent on the last.
    #[schema(nullable = false)]
    pub next: Option<String>,
}

/// A job. Times are RFC 3339 with milliseconds, in UTC.
#[derive(Serialize, ToSchema)]
#[schema(as = Job)]
pub struct JobDoc {
    pub id: String,
    pub queue: String,
    pub kind: String,
    /// What the handler is given: any JSON. Left out of a brief page (`GET /v1/jobs?brief=true`),
    /// as `result` is.
    #[schema(required = false)]
    pub payload: Value,
    /// 0 (most urgent) to 9.
    pub priority: u8,
    pub state: JobStateDoc,
    /// When the job is (or was) due to run.
    #[schema(format = DateTime)]
    pub run_at: String,
    /// Handler runs started so far, not counting interrupted ones.
    pub attempt: u32,
    pub max_retries: u32,
    pub timeout_ms: Option<u64>,
    /// Attempts cut short because the worker died.
    pub interruptions: u32,
    /// The last progress reported, 0 to 100.
    pub progress: u8,
    pub progress_message: Option<String>,
    /// What the handler returned, once succeeded: any JSON.
    pub result: Option<Value>,
    /// Why the last attempt failed, or why the job was cancelled or went dead.
    pub last_error: Option<String>,
    pub unique_key: Option<String>,
    #[schema(format = DateTime)]
    pub lease_until: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// Present on a step of a chain.
    #[schema(nullable = false)]
    pub chain: Option<ChainLinkDoc>,
    /// What an earlier attempt saved to resume from (e.g. the channels of a notification
    /// already delivered), kept across retries: any JSON. Absent until one is saved.
    #[schema(nullable = false)]
    pub checkpoint: Option<Value>,
}

/// One step of a chain, as a job's `steps` list shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Step)]
pub struct StepDoc {
    pub id: String,
    pub index: u32,
    pub kind: String,
    pub state: JobStateDoc,
    pub last_error: Option<String>,
}

/// An enqueued job (`POST /v1/jobs`), with every step of its chain when it starts one.
#[derive(Serialize, ToSchema)]
#[schema(as = EnqueuedJob)]
pub struct JobWithStepsDoc {
    #[serde(flatten)]
    pub job: JobDoc,
    /// Present when the job starts a chain.
    #[schema(nullable = false)]
    pub steps: Option<Vec<StepDoc>>,
}

/// A job with its history (`GET /v1/jobs/{id}`).
#[derive(Serialize, ToSchema)]
#[schema(as = JobDetail)]
pub struct JobWithHistoryDoc {
    #[serde(flatten)]
    pub job: JobDoc,
    pub history: Vec<EventDoc>,
    /// Present when the job is a step of a chain.
    #[schema(nullable = false)]
    pub steps: Option<Vec<StepDoc>>,
    /// Why the job is not running yet; null when it runs or is finished.
    pub waiting: Option<WaitingDoc>,
}

/// A page of jobs, newest first.
#[derive(Serialize, ToSchema)]
#[schema(as = JobPage)]
pub struct JobPageDoc {
    pub jobs: Vec<JobDoc>,
    /// Pass back as `cursor` for the next page; `null` on the last page. A page may hold fewer
    /// jobs than asked, even none, while this is set: on Redis a filter that matches few of
    /// many jobs is scanned a bounded amount per page. Follow it until it is `null`.
    pub next_cursor: Option<String>,
}

/// An event's type.
#[derive(Serialize, ToSchema)]
#[schema(as = EventType)]
pub enum EventTypeDoc {
    #[serde(rename = "job.enqueued")]
    Enqueued,
    #[serde(rename = "job.started")]
    Started,
    #[serde(rename = "job.progress")]
    Progress,
    #[serde(rename = "job.succeeded")]
    Succeeded,
    #[serde(rename = "job.retrying")]
    Retrying,
    #[serde(rename = "job.dead")]
    Dead,
    #[serde(rename = "job.cancelled")]
    Cancelled,
    #[serde(rename = "job.interrupted")]
    Interrupted,
    #[serde(rename = "job.released")]
    Released,
}

/// One entry of the event log.
#[derive(Serialize, ToSchema)]
#[schema(as = Event)]
pub struct EventDoc {
    /// Position in the log; opaque, pass it back as `since`.
    pub id: String,
    #[serde(rename = "type")]
    pub kind_of_event: EventTypeDoc,
    pub job_id: String,
    pub queue: String,
    pub kind: String,
    #[schema(format = DateTime)]
    pub at: String,
    pub attempt: u32,
    #[schema(nullable = false)]
    pub progress: Option<u8>,
    #[schema(nullable = false)]
    pub message: Option<String>,
    /// Any JSON (`job.succeeded`).
    pub result: Option<Value>,
    #[schema(nullable = false)]
    pub error: Option<String>,
}

/// One page of the event log (`GET /v1/events` without an upgrade or `text/event-stream`).
#[derive(Serialize, ToSchema)]
#[schema(as = EventPage)]
pub struct EventPageDoc {
    /// The page's events that match the filter.
    pub events: Vec<EventDoc>,
    /// Pass back as `since` for what follows; `null` when the log is empty.
    pub next: Option<String>,
    /// The `since` cursor was older than the log retains, or past its end (then `events` is
    /// the log from its oldest event): events were missed.
    pub gap: bool,
}

/// Jobs of one queue by state.
#[derive(Serialize, ToSchema)]
#[schema(as = StateCounts)]
pub struct StateCountsDoc {
    pub waiting: u64,
    pub scheduled: u64,
    pub queued: u64,
    pub running: u64,
    pub retrying: u64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
}

/// One queue's numbers.
#[derive(Serialize, ToSchema)]
#[schema(as = QueueStats)]
pub struct QueueStatsDoc {
    pub queue: String,
    pub counts: StateCountsDoc,
    /// Paused in the broker or by this node's config.
    pub paused: bool,
    pub processed_last_minute: u64,
    pub failed_last_minute: u64,
}

/// `GET /v1/queues`.
#[derive(Serialize, ToSchema)]
pub struct QueueList {
    /// Every queue with jobs or named by the config, by name.
    pub queues: Vec<QueueStatsDoc>,
}

/// One queue as a worker node serves it.
#[derive(Serialize, ToSchema)]
#[schema(as = QueueLoad)]
pub struct QueueLoadDoc {
    pub queue: String,
    /// Its jobs running on the node now.
    pub busy: u64,
    /// Its `[[queue]] concurrency` on the node, if it has one.
    pub limit: Option<u64>,
    /// Paused by the node's config.
    pub paused: bool,
}

/// A worker node, as it last registered.
#[derive(Serialize, ToSchema)]
#[schema(as = WorkerNode)]
pub struct WorkerNodeDoc {
    /// Unique per process run.
    pub id: String,
    pub host: String,
    pub pid: u32,
    #[schema(format = DateTime)]
    pub started_at: String,
    /// When the broker last heard from it (every few seconds while it runs).
    #[schema(format = DateTime)]
    pub last_seen: String,
    pub queues: Vec<QueueLoadDoc>,
    /// The job kinds it runs.
    pub kinds: Vec<String>,
    pub slots_total: u64,
    pub slots_busy: u64,
}

/// `GET /v1/workers`.
#[derive(Serialize, ToSchema)]
pub struct WorkerList {
    /// Every node heard from in the last minute, by host and pid.
    pub workers: Vec<WorkerNodeDoc>,
}

/// An endpoint of `notify.send` whose circuit breaker is open or half-open.
#[derive(Serialize, ToSchema)]
#[schema(as = Circuit)]
pub struct CircuitDoc {
    /// The webhook URL or push service origin, without credentials, query or fragment.
    pub endpoint: String,
    /// `open` (deliveries wait) or `half_open` (a probe may go or is under way).
    pub state: String,
    /// Consecutive failures that opened it.
    pub failures: u32,
    /// Milliseconds until its probe may go (0 when half-open).
    pub probe_in_ms: u64,
    /// The current cool-down, in milliseconds.
    pub cooldown_ms: u64,
    /// A probe is under way on some node.
    pub probing: bool,
}

/// `GET /v1/circuits`.
#[derive(Serialize, ToSchema)]
pub struct CircuitList {
    /// By endpoint.
    pub circuits: Vec<CircuitDoc>,
}

/// Why a job is not running yet (`waiting` of `GET /v1/jobs/{id}`).
#[derive(Serialize, ToSchema)]
#[schema(as = Waiting)]
pub struct WaitingDoc {
    /// `run_at`, `chain_predecessor`, `queue_paused`, `no_worker`, `queue_concurrency`,
    /// `queue_rate` or `behind` (README, "Why is my job not running").
    pub reason: String,
    /// The same for people.
    pub message: String,
    /// `run_at`: when it is due; `queue_rate`: when the queue's rate next allows a start.
    #[schema(nullable = false, format = DateTime)]
    pub until: Option<String>,
    /// `chain_predecessor`: the step it waits for.
    #[schema(nullable = false)]
    pub predecessor: Option<String>,
    /// `behind`: ready jobs ahead of it.
    #[schema(nullable = false)]
    pub ahead: Option<u64>,
}

/// `POST /v1/queues/{name}/pause` and `/resume`.
#[derive(Serialize, ToSchema)]
pub struct QueuePaused {
    pub queue: String,
    /// Whether the queue is now paused (by the broker, or by this node's config).
    pub paused: bool,
    /// Jobs the broker holds for the queue, in any state; null when they cannot be counted now
    /// (the change is stored all the same, and `warning` says so).
    pub jobs: Option<u64>,
    /// Worker nodes serving the queue (heard from in the last minute); null as `jobs`.
    pub workers: Option<u64>,
    /// When no job and no worker knows the queue (a typo of its name?), or they cannot be
    /// counted.
    pub warning: Option<String>,
}

/// `POST /v1/queues/{name}/retry-dead`.
#[derive(Serialize, ToSchema)]
pub struct QueueRetried {
    pub queue: String,
    /// Dead jobs queued again.
    pub retried: u64,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `"ok"`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `"ready"`.
    pub status: String,
    /// `"sqlite"` or `"redis"`.
    pub broker: String,
}

/// The answer of `POST /v1/jobs/batch`: each job in the order sent.
#[derive(Serialize, ToSchema)]
#[schema(as = EnqueueBatchAnswer)]
pub struct BatchAnswerDoc {
    pub jobs: Vec<BatchJobDoc>,
}

/// One job of a batch's answer, as `POST /v1/jobs` would have answered it.
#[derive(Serialize, ToSchema)]
#[schema(as = EnqueueBatchJob)]
pub struct BatchJobDoc {
    /// 201: created; 200: its `unique_key` was taken (by an earlier job or an earlier one of
    /// the same batch), and `job` is the existing job.
    #[schema(minimum = 200, maximum = 201)]
    pub status: u16,
    pub job: JobWithStepsDoc,
}

/// The answer of `POST /v1/publish`.
#[derive(Serialize, ToSchema)]
#[schema(as = Published)]
pub struct PublishedDoc {
    /// The topic published.
    pub topic: String,
    /// How many subscriptions matched: one job each.
    pub matched: u64,
    /// True when the `key` was published before: nothing was created, and `jobs` are the
    /// jobs that first publish created.
    pub duplicate: bool,
    /// One per matching subscription, in config order.
    pub jobs: Vec<PublishedJobDoc>,
}

/// One job of a publish.
#[derive(Serialize, ToSchema)]
#[schema(as = PublishedJob)]
pub struct PublishedJobDoc {
    /// The index of the `[[subscription]]` that made it.
    pub subscription: u64,
    pub id: String,
    pub kind: String,
    pub queue: String,
    /// False when the key was published before: this job is that publish's.
    pub created: bool,
}

// ---- Request bodies and query parameters ------------------------------------------------------

/// The body of `POST /v1/publish`. Unknown fields are refused (400 `unknown_field`); `null`
/// counts as absent.
#[derive(Serialize, ToSchema)]
#[schema(as = PublishRequest)]
pub struct PublishDoc {
    /// Dot-separated segments of letters, digits, `-` or `_`; not under `job.` (Hopper's own
    /// job events).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$",
        example = "user.created"
    )]
    pub topic: String,
    /// A JSON object; the subscriptions' payload templates see it as `data`. Default `{}`.
    pub data: Option<serde_json::Map<String, Value>>,
    /// Idempotency key: publishing it again creates nothing and answers the first jobs
    /// (`duplicate`), for as long as those jobs are kept (at least 24 h by default). 1 to
    /// 200 bytes of UTF-8 (so fewer characters when they are not ASCII; JSON Schema's
    /// `maxLength` counts characters, so it is not given).
    #[schema(min_length = 1)]
    pub key: Option<String>,
}

/// The body of `POST /v1/jobs/batch`.
#[derive(Serialize, ToSchema)]
#[schema(as = EnqueueBatchRequest)]
pub struct BatchDoc {
    /// 1 to `[server] max_batch` (default 1,000) jobs, each as `POST /v1/jobs` takes it.
    #[schema(min_items = 1)]
    pub jobs: Vec<EnqueueDoc>,
}

/// The body of `POST /v1/jobs`. Unknown fields are refused (400 `unknown_field`); `null`
/// counts as absent.
#[derive(Serialize, ToSchema)]
#[schema(as = EnqueueRequest)]
pub struct EnqueueDoc {
    #[serde(flatten)]
    pub job: EnqueueStepDoc,
    /// Jobs to run after this one, in order, each once the one before succeeded (a chain).
    /// A step cannot have its own `then`.
    pub then: Option<Vec<EnqueueStepDoc>>,
}

/// One job to enqueue (the body, or a step of its `then`).
#[derive(Serialize, ToSchema)]
#[schema(as = EnqueueStep)]
pub struct EnqueueStepDoc {
    /// A job kind this server registers; otherwise 422 `unknown_kind`. 1 to 128 bytes of UTF-8
    /// (JSON Schema's `maxLength` counts characters, so it is not given).
    #[schema(min_length = 1, example = "sys.noop")]
    pub kind: String,
    /// What the handler is given, a JSON object; the kind checks it. Default `{}`.
    pub payload: Option<serde_json::Map<String, Value>>,
    /// Default `"default"`. Every step of a chain runs on the first step's queue.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub queue: Option<String>,
    /// 0 (most urgent) to 9. Default 5.
    #[schema(maximum = 9)]
    pub priority: Option<u8>,
    /// Run after this long, e.g. `"30s"`, `"5m"`; at most 100 years. Not with `run_at`, and
    /// only on the first step of a chain.
    #[schema(example = "30s")]
    pub delay: Option<String>,
    /// Run at this time, RFC 3339; at most 100 years ahead. Not with `delay`, and only on the
    /// first step of a chain.
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// Retries after a failed attempt, at most 1000. Default `[retry] max_retries`.
    #[schema(maximum = 1000)]
    pub max_retries: Option<u32>,
    /// Per-attempt time limit, e.g. `"30s"`, at most 100 years. Default `[worker] job_timeout`.
    #[schema(example = "30s")]
    pub timeout: Option<String>,
    /// At most one job of its queue has this key: a second enqueue answers the first job,
    /// 200. Only on the first step of a chain.
    #[schema(min_length = 1, max_length = 256)]
    pub unique_key: Option<String>,
}

/// The query of `GET /v1/jobs`. Unknown parameters are refused (400 `unknown_field`).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs of this queue.
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub queue: Option<String>,
    /// Only jobs in this state.
    #[param(inline)]
    pub state: Option<JobStateDoc>,
    /// Only jobs of this kind: 1 to 128 bytes of UTF-8 (`maxLength` would count characters).
    #[param(min_length = 1)]
    pub kind: Option<String>,
    /// Jobs per page. Default 50.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `true` leaves each job's `payload` and `result` out: a page for a screen, not a megabyte
    /// of payloads. Default `false`.
    pub brief: Option<bool>,
}

/// The query of `GET /v1/events`. Unknown parameters are refused (400 `invalid_parameter`).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of these jobs: a comma list of ids, each at most 64 bytes of UTF-8.
    #[param(pattern = "^[^,]*[^,\\s][^,]*(,[^,]*[^,\\s][^,]*)*$")]
    pub job: Option<String>,
    /// Only events of these queues: a comma list of queue names.
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}(,[A-Za-z0-9._-]{1,64})*$")]
    pub queue: Option<String>,
    /// Only events of these kinds: a comma list, each at most 128 bytes of UTF-8.
    #[param(pattern = "^[^,]*[^,\\s][^,]*(,[^,]*[^,\\s][^,]*)*$")]
    pub kind: Option<String>,
    /// Only events of these types: a comma list, e.g. `job.succeeded,job.dead`.
    #[param(
        rename = "type",
        pattern = "^job\\.(enqueued|started|progress|succeeded|retrying|dead|cancelled|interrupted|released)(,job\\.(enqueued|started|progress|succeeded|retrying|dead|cancelled|interrupted|released))*$"
    )]
    pub type_: Option<String>,
    /// Resume after this event id (a page's `next`, or an event's `id`); an id the broker never
    /// issued is a 400. Default: from now on (a stream), from the start of the log (a page).
    #[param(min_length = 1)]
    pub since: Option<String>,
    /// Events per page, before filtering. Default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Property names of a schema object, for the tests that compare a mirror with the real type.
#[cfg(test)]
pub fn properties(doc: &Value, schema: &str) -> std::collections::BTreeSet<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}
