//! One client's stream of frames: the replay of what it missed, then the live events, with no
//! gap and no duplicate at the seam; a `gap` frame when its cursor is older than retention or
//! past the end of the log, and a final `lagged` frame when it fell behind. The WebSocket and
//! SSE transports both read a [`Feed`]; neither knows about the seam.
//!
//! The seam: the feed subscribes to the hub and reads the hub's position `(seq, id)` in one
//! step (the hub never sends part of a page between the two, see `Hub::subscribe`). Every
//! event the hub broadcasts after that has a greater `seq` and is in the receiver; every
//! event up to it is in the broker's log up to `id`. So the feed replays from the broker after
//! `since` up to and including `id`, then drops received events with `seq` up to the position.
//!
//! Where `since` is decides the rest (`super::cursor`): behind the position, the replay above
//! (after a `gap` frame when retention trimmed the cursor's event); past the end of the log, a
//! `gap` frame and the replay from the log's start; ahead of the position (a cursor another
//! process issued before this hub read its event), no replay, and the received events up to
//! the cursor, which the client has, are passed over.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use hopper_workers::BrokerError;
use hopper_workers::event::Event;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use super::cursor::{self, Cursor};
use super::filter::EventFilter;
use super::hub::{Hub, HubEvent};

/// Events read from the broker per replay round-trip.
const REPLAY_PAGE: usize = 1000;

/// What a transport sends next.
#[derive(Debug)]
pub enum Frame {
    /// An event, as the hub shares it with every stream (replayed ones are wrapped alike).
    Event(Arc<HubEvent>),
    /// The client's cursor is older than what the log retains, or past its end.
    Gap,
    /// The client fell behind: the last frame, with the cursor to reconnect with.
    Lagged { resume: Option<String> },
}

impl Frame {
    /// The frame's JSON text (an event's is shared, not copied).
    pub fn text(&self) -> Utf8Bytes {
        match self {
            Frame::Event(e) => e.text.clone(),
            Frame::Gap => json!({ "type": "gap" }).to_string().into(),
            Frame::Lagged { resume } => json!({ "type": "lagged", "resume": resume })
                .to_string()
                .into(),
        }
    }
}

/// One client's position in the stream.
pub struct Feed {
    hub: Hub,
    rx: broadcast::Receiver<Arc<HubEvent>>,
    filter: EventFilter,
    /// Replayed events not yet handed out.
    pending: VecDeque<Event>,
    /// Where the replay reads next; `None` once the replay reached the hub's position.
    replay_after: Option<Option<String>>,
    /// The hub's position when the feed subscribed: the replay ends at `id`, and received
    /// events up to `seq` were replayed.
    until_id: Option<String>,
    until_seq: u64,
    /// Ids of received events the client already has (its cursor was ahead of the hub's
    /// position), in the log's order: passed over, up to the last of them.
    skip: Vec<String>,
    /// The last replayed event handed out or passed over by the filter, or the cursor the
    /// feed opened at: where a client resumes until a live event is received.
    resume: Option<String>,
    /// The last live event handed out or passed over: where a client resumes once there is
    /// one (kept as the shared event, so that following the stream copies no id).
    last_live: Option<Arc<HubEvent>>,
    gap: bool,
    done: bool,
}

impl Feed {
    /// Opens a feed after `since` (live only when `None`). `None` when the hub stopped.
    pub async fn open(
        hub: &Hub,
        filter: EventFilter,
        since: Option<String>,
    ) -> Result<Option<Self>, BrokerError> {
        let Some((rx, position)) = hub.subscribe().await else {
            return Ok(None);
        };
        let located = match &since {
            Some(s) => {
                Some(cursor::locate(hub.broker().as_ref(), s, position.id.as_deref()).await?)
            }
            None => None,
        };
        let gap = located.as_ref().is_some_and(Cursor::gap);
        let resume = since.clone().or_else(|| position.id.clone());
        // Where the replay reads from; none when the client is where the hub is, or nothing
        // precedes the hub's position (the events after it come live).
        let (replay_after, skip) = match (located, &since) {
            (Some(Cursor::Behind { .. }), Some(s))
                if Some(s) != position.id.as_ref() && position.id.is_some() =>
            {
                (Some(Some(s.clone())), Vec::new())
            }
            (Some(Cursor::PastEnd), _) if position.id.is_some() => (Some(None), Vec::new()),
            (Some(Cursor::Ahead { skip }), _) => (None, skip),
            _ => (None, Vec::new()),
        };
        Ok(Some(Self {
            hub: hub.clone(),
            rx,
            filter,
            pending: VecDeque::new(),
            replay_after,
            until_id: position.id,
            until_seq: position.seq,
            skip,
            resume,
            last_live: None,
            gap,
            done: false,
        }))
    }

    /// The next frame; `None` once the stream is over (the hub stopped, or after `lagged`).
    ///
    /// Cancel-safe: a transport waits on it in a `select!` beside the client's frames and its
    /// ping timer, which drop it whenever they win. Nothing of the feed changes before an
    /// await returns (the replay's position is read, not taken, while its page is read), so a
    /// dropped call loses nothing; taking it cut the replay short, and the stream went live.
    pub async fn next(&mut self) -> Result<Option<Frame>, BrokerError> {
        loop {
            if let Some(frame) = self.ready()? {
                return Ok(Some(frame));
            }
            if self.done {
                return Ok(None);
            }
            if let Some(after) = self.replay_after.clone() {
                self.replay_page(after).await?;
                continue;
            }
            let received = match self.rx.recv().await {
                Ok(ev) => Ok(ev),
                Err(RecvError::Lagged(_)) => Err(TryRecvError::Lagged(0)),
                Err(RecvError::Closed) => Err(TryRecvError::Closed),
            };
            if let Some(frame) = self.take(received) {
                return Ok(Some(frame));
            }
        }
    }

    /// The next frame if it is ready now, without waiting or reading the broker: how a
    /// transport gathers what arrived together into one write.
    pub fn ready(&mut self) -> Result<Option<Frame>, BrokerError> {
        if self.done {
            return Ok(None);
        }
        if std::mem::take(&mut self.gap) {
            return Ok(Some(Frame::Gap));
        }
        while let Some(e) = self.pending.pop_front() {
            self.resume = Some(e.id.clone());
            if self.filter.matches(&e) {
                return Ok(Some(Frame::Event(Arc::new(HubEvent::new(0, e)?))));
            }
        }
        if self.replay_after.is_some() {
            return Ok(None);
        }
        loop {
            let received = self.rx.try_recv();
            if matches!(received, Err(TryRecvError::Empty)) {
                return Ok(None);
            }
            if let Some(frame) = self.take(received) {
                return Ok(Some(frame));
            }
            if self.done {
                return Ok(None);
            }
        }
    }

    /// What a received broadcast means for this feed: a frame to send, or nothing (replayed
    /// already, filtered out, or the end).
    fn take(&mut self, received: Result<Arc<HubEvent>, TryRecvError>) -> Option<Frame> {
        match received {
            Ok(ev) if ev.seq <= self.until_seq || self.has(&ev) => None,
            Ok(ev) => {
                let matches = self.filter.matches(&ev.event);
                self.last_live = Some(ev.clone());
                matches.then_some(Frame::Event(ev))
            }
            Err(TryRecvError::Lagged(_)) => {
                self.done = true;
                Some(Frame::Lagged {
                    resume: self.resume(),
                })
            }
            Err(TryRecvError::Closed | TryRecvError::Empty) => {
                self.done = true;
                None
            }
        }
    }

    /// Whether the client already has the received `ev` (see `skip`). The hub broadcasts the
    /// log in order, so an event not among them means the client's cursor is behind.
    fn has(&mut self, ev: &HubEvent) -> bool {
        if self.skip.is_empty() {
            return false;
        }
        match self.skip.iter().position(|id| *id == ev.event.id) {
            Some(at) => {
                self.skip.drain(..=at);
                true
            }
            None => {
                self.skip.clear();
                false
            }
        }
    }

    /// Where a client resumes: the last event handed out or passed over.
    fn resume(&self) -> Option<String> {
        match &self.last_live {
            Some(ev) => Some(ev.event.id.clone()),
            None => self.resume.clone(),
        }
    }

    /// Reads one page of the replay after `after` into `pending`, up to the hub's position,
    /// and moves the replay's position past it (to none at the hub's position or the log's
    /// end). Changes nothing until the page is read (see [`Feed::next`]).
    async fn replay_page(&mut self, after: Option<String>) -> Result<(), BrokerError> {
        let page = self
            .hub
            .broker()
            .events(after.as_deref(), REPLAY_PAGE)
            .await?;
        let Some(last) = page.last().map(|e| e.id.clone()) else {
            self.replay_after = None;
            return Ok(());
        };
        for e in page {
            let at_end = Some(&e.id) == self.until_id.as_ref();
            self.pending.push_back(e);
            if at_end {
                self.replay_after = None;
                return Ok(());
            }
        }
        self.replay_after = Some(Some(last));
        Ok(())
    }
}
