//! The JSON line format of `[log] format = "json"`: one object per line with `timestamp`,
//! `level`, the fields of every span the event happened in (outermost first, so an inner
//! span's field wins), then the event's own fields (`message` among them) and `target`, all at
//! the top level.
//!
//! tracing-subscriber's own JSON formatter can only nest span fields (under `span` or
//! `spans`), which log shippers and journald cannot filter on; flattening them is all this
//! module adds. Span fields are recorded by [`JsonFields`], so each span's are kept as a JSON
//! object already and are merged here, not reformatted.

use std::fmt;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as flat JSON lines (see the module docs). Use with
/// `.fmt_fields(JsonFields::new())`, which stores span fields as JSON.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Line::default();
        let mut now = String::new();
        SystemTime.format_time(&mut Writer::new(&mut now))?;
        line.put("timestamp", Value::String(now));
        line.put("level", Value::String(event.metadata().level().to_string()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    for (name, value) in fields {
                        line.put(&name, value);
                    }
                }
            }
        }
        event.record(&mut Fields(&mut line));
        line.put(
            "target",
            Value::String(event.metadata().target().to_owned()),
        );
        writeln!(writer, "{line}")
    }
}

/// A line's fields in the order they were first put (`timestamp` and `level` first, as
/// people read them); putting a name again replaces its value in place.
#[derive(Default)]
struct Line(Vec<(String, Value)>);

impl Line {
    fn put(&mut self, name: &str, value: Value) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{value}", Value::from(name.as_str()))?;
        }
        f.write_str("}")
    }
}

/// Records an event's fields into the line.
struct Fields<'a>(&'a mut Line);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        self.0.put(field.name(), value);
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}
