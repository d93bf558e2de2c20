//! A subscription's stable id, the last part of its jobs' unique keys
//! (`publish:<key>:<id>`): a short hash of what the subscription is (its topic, kind, queue,
//! priority, payload template and filter), not of where it stands in the config, so that
//! reordering `[[subscription]]`s between a crash and a replay of a key neither duplicates a
//! job nor answers one subscription with another's.
//!
//! Two subscriptions that are the same in all of those would hash alike; the second one's id
//! gets `.1`, the third's `.2` (by config order among those twins only).

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::SubscriptionConfig;

/// Hex digits of the hash kept: 64 bits, ample for the few subscriptions of one config.
const ID_LEN: usize = 16;

/// The ids of `configs`, one each, in their order.
pub fn subscription_ids(configs: &[SubscriptionConfig]) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    configs
        .iter()
        .map(|c| {
            let base = hash(c);
            let twins = seen.entry(base.clone()).or_insert(0);
            let id = if *twins == 0 {
                base
            } else {
                format!("{base}.{twins}")
            };
            *twins += 1;
            id
        })
        .collect()
}

/// The hash of one subscription's content, independent of the order of its payload's keys.
fn hash(c: &SubscriptionConfig) -> String {
    let payload = serde_json::to_value(c.payload.clone().unwrap_or_default()).unwrap_or_default();
    let filter = serde_json::to_value(c.filter.clone().unwrap_or_default()).unwrap_or_default();
    let content = Value::Array(vec![
        Value::from(c.topic.as_str()),
        Value::from(c.kind.as_str()),
        c.queue.as_deref().map_or(Value::Null, Value::from),
        c.priority.map_or(Value::Null, Value::from),
        payload,
        filter,
    ]);
    let mut text = String::new();
    canonical(&content, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    let mut hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(ID_LEN);
    hex
}

/// `v` as JSON text with every object's keys sorted.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push(':');
                if let Some(value) = map.get(k) {
                    canonical(value, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(topic: &str, kind: &str, payload: &str) -> SubscriptionConfig {
        toml::from_str(&format!(
            "topic = {topic:?}\nkind = {kind:?}\npayload = {payload}\n"
        ))
        .expect("a subscription")
    }

    #[test]
    fn reordering_subscriptions_keeps_each_ones_id() {
        let a = sub("user.*", "email", "{ to = \"{{ data.email }}\" }");
        let b = sub("user.*", "webhook", "{ url = \"https://x.example\" }");
        let c = sub("billing.#", "email", "{ to = \"{{ data.email }}\" }");
        let ids = subscription_ids(&[a.clone(), b.clone(), c.clone()]);
        let reordered = subscription_ids(&[c, a, b]);
        assert_eq!(
            reordered,
            vec![ids[2].clone(), ids[0].clone(), ids[1].clone()]
        );
        assert_eq!(ids[0].len(), ID_LEN);
        assert!(
            ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
            "{ids:?}"
        );
    }

    #[test]
    fn the_order_of_payload_keys_does_not_matter_but_their_content_does() {
        let one = sub("t", "k", "{ a = 1, b = { c = \"x\", d = 2 } }");
        let two = sub("t", "k", "{ b = { d = 2, c = \"x\" }, a = 1 }");
        let other = sub("t", "k", "{ a = 1, b = { c = \"y\", d = 2 } }");
        let ids = subscription_ids(&[one]);
        assert_eq!(subscription_ids(&[two]), ids);
        assert_ne!(subscription_ids(&[other]), ids);
    }

    #[test]
    fn identical_subscriptions_get_distinct_ids_by_their_order_among_themselves() {
        let a = sub("t", "k", "{}");
        let b = sub("u", "k", "{}");
        let ids = subscription_ids(&[a.clone(), a.clone(), b.clone()]);
        assert_eq!(ids[1], format!("{}.1", ids[0]));
        let moved = subscription_ids(&[b, a.clone(), a]);
        assert_eq!(moved, vec![ids[2].clone(), ids[0].clone(), ids[1].clone()]);
    }
}
