//! Where a `pdf.report`'s rows come from and how they become display cells: JSON rows (each
//! an array, or an object read by column name) or a table of an `etl.sync` SQLite file. This
//! module owns the reading and the cell text; it does not own the order of the sources
//! (`super::load_table`) nor how cells are drawn (`super::layout`).

use hopper_workers::JobError;
use serde_json::Value;

use super::MAX_ROWS;
use crate::files::FilesDir;
use crate::payload::valid_ident;

/// Rows as display strings, and which cells are numbers (right-aligned).
pub(super) struct Table {
    pub(super) columns: Vec<String>,
    pub(super) rows: Vec<Vec<(String, bool)>>,
}

fn cell(v: &Value) -> (String, bool) {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    };
    // Control characters would break the line; the report shows one line per cell.
    let text = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    (text, v.is_number())
}

pub(super) fn table_from_json(
    columns: Vec<String>,
    rows: &[Value],
    field: &str,
) -> Result<Table, JobError> {
    if rows.len() > MAX_ROWS {
        return Err(JobError::permanent(format!(
            "{field}: at most {MAX_ROWS} rows"
        )));
    }
    if columns.is_empty() {
        return Err(JobError::permanent(
            "invalid payload: payload.columns: needs at least one column",
        ));
    }
    let rows = rows
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            Value::Array(cells) => Ok(columns
                .iter()
                .enumerate()
                .map(|(j, _)| cells.get(j).map_or((String::new(), false), cell))
                .collect()),
            Value::Object(map) => Ok(columns
                .iter()
                .map(|c| map.get(c).map_or((String::new(), false), cell))
                .collect()),
            _ => Err(JobError::permanent(format!(
                "{field}[{i}]: must be an array of values or an object"
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(Table { columns, rows })
}

/// Reads `table` from the SQLite file of an `etl.sync` result.
pub(super) fn table_from_sqlite(
    files: &FilesDir,
    database: &str,
    table: &str,
    columns: Vec<String>,
) -> Result<Table, JobError> {
    let rel = database.strip_prefix("sqlite:").ok_or_else(|| {
        JobError::permanent(format!(
            "input.database {database:?}: only sqlite:<file> databases can be read by a report"
        ))
    })?;
    if !valid_ident(table) {
        return Err(JobError::permanent(format!(
            "input.table {table:?}: not a valid table name"
        )));
    }
    let path = files.existing(rel)?;
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| JobError::permanent(format!("{database}: {e}")))?;
    let sql_err =
        |e: rusqlite::Error| JobError::permanent(format!("{database} table {table}: {e}"));
    let columns = if columns.is_empty() {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
            ))
            .map_err(sql_err)?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sql_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_err)?;
        if names.is_empty() {
            return Err(JobError::permanent(format!(
                "{database}: no table {table:?}"
            )));
        }
        names
    } else {
        if let Some(bad) = columns.iter().find(|c| !valid_ident(c)) {
            return Err(JobError::permanent(format!(
                "invalid payload: payload.columns: {bad:?} is not a column name"
            )));
        }
        columns
    };
    let list = columns
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {list} FROM \"{table}\" ORDER BY rowid LIMIT {}",
            MAX_ROWS + 1
        ))
        .map_err(sql_err)?;
    let n = columns.len();
    let rows = stmt
        .query_map([], |r| {
            (0..n)
                .map(|i| {
                    use rusqlite::types::ValueRef;
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => (String::new(), false),
                        ValueRef::Integer(v) => (v.to_string(), true),
                        ValueRef::Real(v) => (v.to_string(), true),
                        ValueRef::Text(t) => {
                            cell(&Value::String(String::from_utf8_lossy(t).into_owned()))
                        }
                        ValueRef::Blob(b) => (format!("<{} bytes>", b.len()), false),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(sql_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_err)?;
    if rows.len() > MAX_ROWS {
        return Err(JobError::permanent(format!(
            "{database} table {table}: over {MAX_ROWS} rows"
        )));
    }
    Ok(Table { columns, rows })
}
