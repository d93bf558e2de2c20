//! A subscription's payload template: a TOML table whose strings are minijinja templates over
//! `{data, topic, key}`, turned into each job's JSON payload.
//!
//! The rule for a string: one that is a single `{{ expression }}` and nothing else (spaces
//! around it aside) takes the expression's value as JSON, so `count = "{{ data.n }}"` is a
//! number and `user = "{{ data.user }}"` an object; any other string is rendered as text
//! (`"Welcome, {{ data.name }}!"`). Numbers, booleans, arrays and tables are copied, their
//! strings templated the same way. Undefined values are errors (minijinja's semi-strict
//! mode: testing one in an `if` is allowed), so a publish whose `data` lacks a field a
//! template uses is refused rather than sending an email to nobody.
//!
//! Templates are checked when the config is loaded ([`Template::compile`]) and parsed again
//! for each event: a template is a few dozen bytes, parsing it costs microseconds, and the
//! environment then borrows nothing. A render is bounded ([`RENDER_FUEL`] instructions,
//! [`MAX_RENDERED`] bytes a string): past either, the publish is refused like a template
//! that fails.

use hopper_jobs::capped::Capped;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};

/// One payload template, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    root: Node,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    /// A string rendered as text.
    Text(String),
    /// A string that was one `{{ expression }}`: the expression.
    Expr(String),
    Array(Vec<Node>),
    Table(Vec<(String, Node)>),
    Plain(Value),
}

/// Instructions one string's render may run (minijinja's fuel): a publish is rendered while
/// its request waits, and a template looping over `data`'s lists within each other would
/// otherwise hold a thread of the API for hours.
pub const RENDER_FUEL: u64 = 5_000_000;
/// The most bytes one rendered string may have.
pub const MAX_RENDERED: usize = 8 * 1024 * 1024;

/// The one environment every template is rendered in.
fn env() -> &'static Environment<'static> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_fuel(Some(RENDER_FUEL));
        env
    })
}

/// Renders the text template `s`, refusing output past [`MAX_RENDERED`].
fn render_text(s: &str, context: &minijinja::Value) -> Result<String, String> {
    let mut out = Capped::new(MAX_RENDERED);
    env()
        .template_from_str(s)
        .and_then(|t| t.render_captured_to(context.clone(), &mut out).map(drop))
        .map_err(|e| {
            if out.over() {
                format!("renders more than {MAX_RENDERED} bytes")
            } else {
                why(&e, s)
            }
        })?;
    String::from_utf8(out.into_inner()).map_err(|e| e.to_string())
}

/// The expression of a string that is exactly one `{{ … }}`, if it is one.
fn lone_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%"))
        .then_some(inner.trim())
}

impl Template {
    /// Checks every template of `table`; the error names the key (`to`, `lines[1].text`).
    pub fn compile(table: &toml::Table) -> Result<Self, (String, String)> {
        Ok(Self {
            root: compile_table(table, "")?,
        })
    }

    /// The payload every event gets when no string of it is a template (no `{{`, `{%` or
    /// `{#`): what the config can check against the kind at start. `None` when any is.
    pub fn fixed(&self) -> Option<Value> {
        fn is_fixed(node: &Node) -> bool {
            match node {
                Node::Expr(_) => false,
                Node::Text(s) => !["{{", "{%", "{#"].iter().any(|m| s.contains(m)),
                Node::Array(items) => items.iter().all(is_fixed),
                Node::Table(entries) => entries.iter().all(|(_, n)| is_fixed(n)),
                Node::Plain(_) => true,
            }
        }
        if !is_fixed(&self.root) {
            return None;
        }
        self.render(&Value::Object(Map::new())).ok()
    }

    /// The payload for one event; the error names the key and says what failed.
    pub fn render(&self, context: &Value) -> Result<Value, (String, String)> {
        render(
            &self.root,
            &minijinja::Value::from(minijinja::value::Serde(context)),
            "",
        )
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

fn compile_table(table: &toml::Table, at: &str) -> Result<Node, (String, String)> {
    let mut entries = Vec::with_capacity(table.len());
    for (key, value) in table {
        entries.push((key.clone(), compile_value(value, &join(at, key))?));
    }
    Ok(Node::Table(entries))
}

fn compile_value(value: &toml::Value, at: &str) -> Result<Node, (String, String)> {
    Ok(match value {
        toml::Value::String(s) => match lone_expression(s) {
            Some(expr) => {
                env()
                    .compile_expression(expr)
                    .map_err(|e| (at.to_owned(), why(&e, s)))?;
                Node::Expr(expr.to_owned())
            }
            None => {
                env()
                    .template_from_str(s)
                    .map_err(|e| (at.to_owned(), why(&e, s)))?;
                Node::Text(s.clone())
            }
        },
        toml::Value::Array(items) => Node::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| compile_value(v, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => compile_table(t, at)?,
        other => {
            Node::Plain(serde_json::to_value(other).map_err(|e| (at.to_owned(), e.to_string()))?)
        }
    })
}

/// What failed, quoting the template: minijinja's own text names an anonymous template
/// `<string>`, which tells the reader nothing.
fn why(e: &minijinja::Error, template: &str) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}, in {template:?}", e.kind()),
        None => format!("{} in {template:?}", e.kind()),
    }
}

fn render(node: &Node, context: &minijinja::Value, at: &str) -> Result<Value, (String, String)> {
    let bad = |e: minijinja::Error| (at.to_owned(), e.to_string());
    Ok(match node {
        Node::Text(s) => {
            Value::String(render_text(s, context).map_err(|why| (at.to_owned(), why))?)
        }
        Node::Expr(expr) => {
            let value = env()
                .compile_expression(expr)
                .map_err(bad)?
                .eval(context.clone())
                .map_err(bad)?;
            if value.is_undefined() {
                return Err((at.to_owned(), format!("{expr} is undefined")));
            }
            serde_json::to_value(&value).map_err(|e| (at.to_owned(), e.to_string()))?
        }
        Node::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, n)| render(n, context, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Node::Table(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (key, n) in entries {
                map.insert(key.clone(), render(n, context, &join(at, key))?);
            }
            Value::Object(map)
        }
        Node::Plain(v) => v.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn template(text: &str) -> Template {
        Template::compile(&text.parse::<toml::Table>().unwrap()).unwrap()
    }

    #[test]
    fn strings_render_and_lone_expressions_keep_their_type() {
        let t = template(
            r#"
            to = "{{data.email}}"
            subject = "Welcome, {{ data.name }}!"
            count = "{{ data.n }}"
            user = "{{ data }}"
            fixed = 3
            tags = ["{{ topic }}", "x"]
            nested = { k = "{{ key }}" }
            "#,
        );
        let ctx = json!({"data": {"email": "a@b.c", "name": "Ann", "n": 2},
                         "topic": "user.created", "key": "k1"});
        assert_eq!(
            t.render(&ctx).unwrap(),
            json!({"to": "a@b.c", "subject": "Welcome, Ann!", "count": 2,
                   "user": {"email": "a@b.c", "name": "Ann", "n": 2}, "fixed": 3,
                   "tags": ["user.created", "x"], "nested": {"k": "k1"}})
        );
    }

    #[test]
    fn a_payload_without_templates_is_fixed() {
        let fixed = template("ms = \"x\"\nlist = [1, \"a\"]\nnested = { k = true }\n");
        assert_eq!(
            fixed.fixed(),
            Some(json!({"ms": "x", "list": [1, "a"], "nested": {"k": true}}))
        );
        for text in [
            "to = \"{{ data.email }}\"",
            "nested = { k = \"Hi {{ data.name }}\" }",
            "t = \"{% if key %}x{% endif %}\"",
        ] {
            assert_eq!(template(text).fixed(), None, "{text}");
        }
    }

    #[test]
    fn undefined_fields_and_bad_syntax_name_the_key() {
        let t = template(r#"to = "{{ data.email }}""#);
        let (key, why) = t.render(&json!({"data": {}})).unwrap_err();
        assert_eq!(key, "to", "{why}");
        let t = template(r#"m = { s = "Hi {{ data.name }}" }"#);
        assert_eq!(t.render(&json!({"data": {}})).unwrap_err().0, "m.s");
        let bad = "x = \"{{ data.\"".parse::<toml::Table>().unwrap();
        assert_eq!(Template::compile(&bad).unwrap_err().0, "x");
    }
}
