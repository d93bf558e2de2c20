//! The delivery record of one `notify.send` job: per delivery (a channel, or one endpoint of
//! a channel that has several: each webhook URL, each push subscription), whether it was
//! delivered, failed or skipped. It is the job's checkpoint, saved after every delivery, so a
//! retry sends only what has not been delivered yet, and it becomes the job's result.
//!
//! This module owns the record's shape and its reading back; the channels decide what goes in.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How one delivery went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Outcome {
    /// Done; never sent again by a retry of the job.
    Delivered,
    /// Not done. `retryable` failures are tried again by the job's next attempt (or after
    /// its endpoint's circuit cool-down); the others never will be.
    Failed { error: String, retryable: bool },
    /// Nothing to deliver, and why (no address, no subscriptions, nothing configured).
    Skipped { why: String },
}

impl Outcome {
    /// A failure a later attempt may get past.
    pub fn retryable(error: impl Into<String>) -> Self {
        Outcome::Failed {
            error: error.into(),
            retryable: true,
        }
    }

    /// A failure no later attempt will get past.
    pub fn permanent(error: impl Into<String>) -> Self {
        Outcome::Failed {
            error: error.into(),
            retryable: false,
        }
    }

    /// A skip, with why.
    pub fn skipped(why: impl Into<String>) -> Self {
        Outcome::Skipped { why: why.into() }
    }

    /// True when a later attempt has nothing more to do for this delivery.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            Outcome::Failed {
                retryable: true,
                ..
            }
        )
    }
}

/// One channel's entry: its outcome, and for a channel with several endpoints, each one's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The channel as a whole: delivered when every endpoint was (or the single delivery),
    /// failed when one failed, skipped when there was nothing to deliver.
    #[serde(flatten)]
    pub outcome: Option<Outcome>,
    /// Per endpoint (webhook URL, push endpoint, each named by its `breaker::label`, not
    /// whole), for channels that have several.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, Outcome>,
}

/// The whole record, keyed by channel name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub channels: BTreeMap<String, ChannelRecord>,
    /// Saved by an attempt that may have ended the job (`dead`: a delivery failed for good, or
    /// its last retry failed): the next run is then `hopper retry`'s, which tries the failed
    /// deliveries anew. Any other run (a retry, a snooze's wake-up, a release at shutdown)
    /// keeps them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
    /// Saved by a run that snoozed (a delivery waits on an open circuit): the next run is its
    /// wake-up, which gives the attempt back, not a fresh start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snoozed: bool,
}

impl Record {
    /// The record an earlier attempt saved in the job's checkpoint; empty when there is
    /// none or it is not a record (a checkpoint written by another version).
    pub fn from_checkpoint(checkpoint: Option<Value>) -> Self {
        checkpoint
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    /// The record as the job's checkpoint and result.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Forgets every failure, keeping what was delivered or skipped: how the run after one
    /// that ended the job reads the record ([`Record::ended`]), so that `hopper retry` of a
    /// dead notification tries its failed deliveries again (permanent ones included) and
    /// nothing delivered twice.
    pub fn forget_failures(&mut self) {
        self.ended = false;
        for c in self.channels.values_mut() {
            c.endpoints
                .retain(|_, o| !matches!(o, Outcome::Failed { .. }));
            if matches!(c.outcome, Some(Outcome::Failed { .. })) {
                c.outcome = None;
            }
        }
    }

    /// True when `channel` (as a whole) needs no more work.
    pub fn channel_done(&self, channel: &str) -> bool {
        self.channels
            .get(channel)
            .and_then(|c| c.outcome.as_ref())
            .is_some_and(Outcome::is_final)
    }

    /// True when `endpoint` of `channel` needs no more work.
    pub fn endpoint_done(&self, channel: &str, endpoint: &str) -> bool {
        self.channels
            .get(channel)
            .and_then(|c| c.endpoints.get(endpoint))
            .is_some_and(Outcome::is_final)
    }

    /// Files what `channel`'s record says of an endpoint under `whole` (its whole URL, as
    /// versions before labels named it) under `label` instead (its error quoting the label),
    /// unless the label has an entry of its own: a record an earlier version saved then
    /// neither keeps the URL nor holds the channel failed after the endpoint is delivered
    /// under its label.
    pub fn relabel_endpoint(&mut self, channel: &str, whole: &str, label: &str) {
        if whole == label {
            return;
        }
        let Some(c) = self.channels.get_mut(channel) else {
            return;
        };
        if let Some(mut outcome) = c.endpoints.remove(whole) {
            if let Outcome::Failed { error, .. } = &mut outcome {
                *error = error.replace(whole, label);
            }
            // Two spellings of one endpoint folding onto one label: a delivery wins over a
            // failure, so that what was delivered is not sent again.
            match c.endpoints.entry(label.to_owned()) {
                Entry::Vacant(v) => {
                    v.insert(outcome);
                }
                Entry::Occupied(mut o) if outcome == Outcome::Delivered => {
                    o.insert(outcome);
                }
                Entry::Occupied(_) => {}
            }
        }
    }

    /// Sets `channel`'s outcome.
    pub fn set_channel(&mut self, channel: &str, outcome: Outcome) {
        self.channels.entry(channel.to_owned()).or_default().outcome = Some(outcome);
    }

    /// Sets one endpoint's outcome of `channel`.
    pub fn set_endpoint(&mut self, channel: &str, endpoint: &str, outcome: Outcome) {
        self.channels
            .entry(channel.to_owned())
            .or_default()
            .endpoints
            .insert(endpoint.to_owned(), outcome);
    }

    /// Sums up `channel`'s endpoints into its own outcome: its retryable failures, else its
    /// permanent ones (each endpoint named with its error, `; ` between them: naming the
    /// first alone, one held back by its open circuit hid another whose delivery failed),
    /// else delivered (when at least one was) or skipped.
    pub fn settle_endpoints(&mut self, channel: &str) {
        let Some(c) = self.channels.get_mut(channel) else {
            return;
        };
        let failed = |retryable_wanted: bool| {
            let errors: Vec<String> = c
                .endpoints
                .iter()
                .filter_map(|(e, o)| match o {
                    Outcome::Failed { error, retryable } if *retryable == retryable_wanted => {
                        Some(format!("{e}: {error}"))
                    }
                    _ => None,
                })
                .collect();
            (!errors.is_empty()).then(|| Outcome::Failed {
                error: errors.join("; "),
                retryable: retryable_wanted,
            })
        };
        let outcome = failed(true).or_else(|| failed(false)).unwrap_or_else(|| {
            if c.endpoints.values().any(|o| *o == Outcome::Delivered) {
                Outcome::Delivered
            } else {
                Outcome::skipped("nothing to deliver")
            }
        });
        c.outcome = Some(outcome);
    }

    /// The failures of channels, `channel: error` each, retryable ones first.
    pub fn failures(&self) -> (Vec<String>, Vec<String>) {
        let mut retryable = Vec::new();
        let mut permanent = Vec::new();
        for (name, c) in &self.channels {
            if let Some(Outcome::Failed {
                error,
                retryable: r,
            }) = &c.outcome
            {
                let line = format!("{name}: {error}");
                if *r {
                    retryable.push(line);
                } else {
                    permanent.push(line);
                }
            }
        }
        (retryable, permanent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_through_the_checkpoint() {
        let mut r = Record::default();
        r.set_channel("email", Outcome::Delivered);
        r.set_endpoint("webhook", "http://a/", Outcome::Delivered);
        r.set_endpoint("webhook", "http://b/", Outcome::retryable("HTTP 500"));
        r.settle_endpoints("webhook");
        r.set_channel("push", Outcome::skipped("no push subscriptions"));
        let v = r.to_value();
        assert_eq!(v["channels"]["email"], json!({"state": "delivered"}));
        assert_eq!(v["channels"]["webhook"]["state"], "failed");
        assert_eq!(
            v["channels"]["push"],
            json!({"state": "skipped", "why": "no push subscriptions"})
        );
        let back = Record::from_checkpoint(Some(v));
        assert_eq!(back, r);
        assert!(back.channel_done("email"));
        assert!(!back.channel_done("webhook"));
        assert!(back.endpoint_done("webhook", "http://a/"));
        assert!(!back.endpoint_done("webhook", "http://b/"));
        assert_eq!(back.failures().0, vec!["webhook: http://b/: HTTP 500"]);
        assert_eq!(Record::from_checkpoint(Some(json!(3))), Record::default());

        // Every failing endpoint is named, not the first in order: one held back by its
        // open circuit named alone hid the one whose delivery failed.
        let mut two = Record::default();
        two.set_endpoint(
            "webhook",
            "http://a/…#1",
            Outcome::retryable("circuit open: waiting"),
        );
        two.set_endpoint("webhook", "http://b/…#2", Outcome::retryable("timed out"));
        two.settle_endpoints("webhook");
        assert_eq!(
            two.failures().0,
            vec!["webhook: http://a/…#1: circuit open: waiting; http://b/…#2: timed out"]
        );

        let mut again = back;
        again.set_channel("email", Outcome::permanent("550"));
        again.forget_failures();
        assert!(!again.channel_done("email"));
        assert!(!again.channel_done("webhook"));
        assert!(again.endpoint_done("webhook", "http://a/"));
        assert!(!again.endpoint_done("webhook", "http://b/"));
        assert!(again.channel_done("push"));
    }

    #[test]
    fn an_entry_under_a_whole_url_moves_to_its_label() {
        let whole = "https://h.example/hooks/s3cret";
        let mut r = Record::default();
        r.set_endpoint(
            "webhook",
            whole,
            Outcome::permanent(format!("POST {whole}: HTTP 400")),
        );
        r.relabel_endpoint("webhook", whole, "https://h.example/…#ab");
        assert!(r.endpoint_done("webhook", "https://h.example/…#ab"));
        assert!(!r.to_value().to_string().contains("s3cret"), "{r:?}");
        // The label's own entry (this version's) wins over the old one.
        r.set_endpoint("webhook", whole, Outcome::retryable("old"));
        r.relabel_endpoint("webhook", whole, "https://h.example/…#ab");
        assert!(r.endpoint_done("webhook", "https://h.example/…#ab"));
        assert_eq!(r.channels["webhook"].endpoints.len(), 1);
    }

    /// Two spellings of one endpoint, one delivered and one failed, fold onto one label as
    /// delivered, in either order: it is not sent again.
    #[test]
    fn a_delivery_wins_when_two_entries_fold_onto_one_label() {
        for delivered_first in [true, false] {
            let mut r = Record::default();
            let (a, b) = ("HTTP://h.example/x", "http://h.example/x#f");
            r.set_endpoint("webhook", a, Outcome::retryable("HTTP 503"));
            r.set_endpoint("webhook", b, Outcome::Delivered);
            let order = if delivered_first { [b, a] } else { [a, b] };
            for whole in order {
                r.relabel_endpoint("webhook", whole, "http://h.example/…#cd");
            }
            assert_eq!(
                r.channels["webhook"].endpoints["http://h.example/…#cd"],
                Outcome::Delivered,
                "delivered first: {delivered_first}"
            );
        }
    }
}
