//! From items to rows in `etl.sync`: JSON paths into a response or an item, and the table's
//! shape both databases share ([`Spec`]: each column's name, path and type, the key, the
//! sync's identity). This module owns turning one item into one row; it does not own fetching
//! (`super::source`) nor the SQL (`super::target`).

use serde_json::Value;

use super::target::{ColType, Target};

/// A dotted path with optional indexes (`result.items`, `data[0].id`); `""` or `"."` is
/// the value itself.
pub fn json_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = value;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, mut rest) = match segment.find('[') {
            Some(i) => segment.split_at(i),
            None => (segment, ""),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped.find(']')?;
            let index: usize = stripped[..end].parse().ok()?;
            cur = cur.get(index)?;
            rest = &stripped[end + 1..];
        }
    }
    Some(cur)
}

/// The table's shape, shared by both databases.
#[derive(Clone, Debug)]
pub(super) struct Spec {
    pub(super) table: String,
    /// Column names, in a stable (sorted) order, with their JSON paths and types.
    pub(super) columns: Vec<(String, String, Option<ColType>)>,
    pub(super) key: Vec<String>,
    /// The sync's identity in the state table.
    pub(super) source: String,
}

impl Spec {
    /// The shape `target` describes, for the sync from `source_url`.
    pub(super) fn new(target: &Target, source_url: &str) -> Self {
        Self {
            table: target.table.clone(),
            columns: target
                .columns
                .iter()
                .map(|(c, p)| (c.clone(), p.clone(), target.types.get(c).copied()))
                .collect(),
            key: target.key.clone(),
            source: source_url.to_owned(),
        }
    }

    /// `item`'s row, one value per column (null where the path finds nothing); `None` when a
    /// key column is null, since such an item cannot be upserted.
    pub(super) fn row(&self, item: &Value) -> Option<Vec<Value>> {
        let row: Vec<Value> = self
            .columns
            .iter()
            .map(|(_, path, _)| json_path(item, path).cloned().unwrap_or(Value::Null))
            .collect();
        let key_missing = self
            .columns
            .iter()
            .zip(&row)
            .any(|((c, _, _), v)| v.is_null() && self.key.contains(c));
        (!key_missing).then_some(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_paths() {
        let v = json!({"result": {"items": [{"id": 1}, {"id": 2}]}, "next": null});
        assert_eq!(json_path(&v, "result.items[1].id"), Some(&json!(2)));
        assert_eq!(json_path(&v, ""), Some(&v));
        assert_eq!(json_path(&v, "result.missing"), None);
        assert_eq!(json_path(&json!([[1, 2]]), "[0][1]"), Some(&json!(2)));
    }
}
