//! Room history and offline boxes every node reads: two JetStream streams.
//!
//! - `IM_HISTORY`, subjects `im.hist.<room in hex>`: each room's newest
//!   [`StoreConfig::room_history`] messages (older ones are discarded); a message's
//!   id is its stream sequence, so ids increase per room and agree on every node.
//! - `IM_PAIRS`, subjects `im.pair.<user in hex>.<user in hex>` (the two in byte
//!   order): each pair's newest [`StoreConfig::pair_history`] direct messages.
//! - `IM_BOX`, subjects `im.box.<user in hex>`: each user's offline messages, at most
//!   [`StoreConfig::offline_max`] per user (one more is refused: the box is full) and
//!   [`StoreConfig::offline_max_age`] old; delivered ones are deleted by sequence.
//!
//! Names are hex-encoded into subjects, so any room or user id makes a valid token.
//! Reading one subject scans it with an ordered consumer: nats-server 2.9 has no
//! "last N of a subject" request, and a subject holds at most the caps above.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::ClusterError;
use crate::server::store::{StoreConfig, StoreError, StoredMessage};

const HISTORY_STREAM: &str = "IM_HISTORY";
const PAIRS_STREAM: &str = "IM_PAIRS";
const BOX_STREAM: &str = "IM_BOX";
/// A read of one subject gives up after this.
const SCAN_TIMEOUT: Duration = Duration::from_secs(5);
/// nats-server's error code for a subject at its `max_messages_per_subject` with
/// `discard_new_per_subject`.
const SUBJECT_FULL: u64 = 10077;

/// One stored message, as the stream keeps it.
#[derive(Serialize, Deserialize)]
struct Logged {
    ts: i64,
    from: String,
    /// The receiver, for direct history (a room's or a box's is its subject's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    content: String,
    typeu: i32,
    fp: Option<String>,
}

pub(super) fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The name `hex` made, or `None` for anything else.
pub(super) fn unhex(token: &str) -> Option<String> {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if !token.len().is_multiple_of(2) || !token.bytes().all(lower_hex) {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Of `all` (oldest first), the newest `limit` with `mid < before`, oldest first, and
/// whether older ones are left: a history page.
fn page_before(
    mut all: Vec<StoredMessage>,
    before: Option<i64>,
    limit: usize,
) -> (Vec<StoredMessage>, bool) {
    all.retain(|m| before.is_none_or(|b| m.mid < b));
    let more = all.len() > limit;
    let newest = all.split_off(all.len().saturating_sub(limit));
    (newest, more)
}

/// The subject of the pair `a`, `b`, the same either way round.
fn pair_subject(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("im.pair.{}.{}", hex(x), hex(y))
}

fn other(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("JetStream: {e}"))
}

/// The cluster's shared history and offline boxes.
pub(crate) struct SharedLog {
    js: jetstream::Context,
    history: stream::Stream,
    pairs: stream::Stream,
    boxes: stream::Stream,
    limits: StoreConfig,
}

impl SharedLog {
    /// Opens the two streams, creating them when missing.
    pub(crate) async fn open(
        js: jetstream::Context,
        limits: StoreConfig,
    ) -> Result<SharedLog, ClusterError> {
        let per_subject = |n: usize| i64::try_from(n.max(1)).unwrap_or(i64::MAX);
        let history = js
            .get_or_create_stream(stream::Config {
                name: HISTORY_STREAM.to_owned(),
                subjects: vec!["im.hist.*".to_owned()],
                max_messages_per_subject: per_subject(limits.room_history),
                discard: stream::DiscardPolicy::Old,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(super::nats)?;
        let pairs = js
            .get_or_create_stream(stream::Config {
                name: PAIRS_STREAM.to_owned(),
                subjects: vec!["im.pair.*.*".to_owned()],
                max_messages_per_subject: per_subject(limits.pair_history),
                discard: stream::DiscardPolicy::Old,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(super::nats)?;
        let boxes = js
            .get_or_create_stream(stream::Config {
                name: BOX_STREAM.to_owned(),
                subjects: vec!["im.box.*".to_owned()],
                max_messages_per_subject: per_subject(limits.offline_max),
                max_age: limits.offline_max_age,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(super::nats)?;
        Ok(SharedLog {
            js,
            history,
            pairs,
            boxes,
            limits,
        })
    }

    async fn publish(
        &self,
        subject: String,
        to: &str,
        entry: Logged,
    ) -> Result<StoredMessage, StoreError> {
        let payload = serde_json::to_vec(&entry).map_err(other)?;
        let ack = self
            .js
            .publish(subject, payload.into())
            .await
            .map_err(other)?
            .await;
        let ack = match ack {
            Ok(ack) => ack,
            Err(e) if e.to_string().contains(&SUBJECT_FULL.to_string()) => {
                return Err(StoreError::BoxFull {
                    user: to.to_owned(),
                    max: self.limits.offline_max,
                });
            }
            Err(e) => return Err(other(e)),
        };
        Ok(StoredMessage {
            mid: i64::try_from(ack.sequence).map_err(other)?,
            ts_ms: entry.ts,
            from: entry.from,
            to: entry.to.unwrap_or_else(|| to.to_owned()),
            content: entry.content,
            typeu: entry.typeu,
            fp: entry.fp,
        })
    }

    /// Every message of `subject` from sequence `from` on, oldest first.
    async fn scan(
        stream: &stream::Stream,
        subject: String,
        to: &str,
        from: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        // An ordered consumer on an empty range would wait for new messages: look at
        // the newest first.
        let last = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(other(e)),
        };
        if from > last {
            return Ok(Vec::new());
        }
        let read = async {
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: subject,
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from.max(1),
                    },
                    ..Default::default()
                })
                .await
                .map_err(other)?;
            let mut messages = consumer.messages().await.map_err(other)?;
            let mut out = Vec::new();
            while let Some(message) = messages.next().await {
                let message = message.map_err(other)?;
                let info = message.info().map_err(other)?;
                let (seq, pending) = (info.stream_sequence, info.pending);
                if let Ok(entry) = serde_json::from_slice::<Logged>(&message.payload) {
                    out.push(StoredMessage {
                        mid: i64::try_from(seq).map_err(other)?,
                        ts_ms: entry.ts,
                        from: entry.from,
                        to: entry.to.unwrap_or_else(|| to.to_owned()),
                        content: entry.content,
                        typeu: entry.typeu,
                        fp: entry.fp,
                    });
                }
                if pending == 0 || seq >= last {
                    break;
                }
            }
            Ok(out)
        };
        tokio::time::timeout(SCAN_TIMEOUT, read)
            .await
            .map_err(|_| StoreError::Other(format!("JetStream: no answer in {SCAN_TIMEOUT:?}")))?
    }

    /// As [`StoreHandle::append_room`](crate::server::StoreHandle::append_room).
    pub(crate) async fn append_room(
        &self,
        room: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
    ) -> Result<StoredMessage, StoreError> {
        let entry = Logged {
            ts: ts_ms,
            from: from.to_owned(),
            to: None,
            content: content.to_owned(),
            typeu,
            fp: fp.map(str::to_owned),
        };
        let to = crate::protocol::room_address(room);
        self.publish(format!("im.hist.{}", hex(room)), &to, entry)
            .await
    }

    /// As [`StoreHandle::room_history`](crate::server::StoreHandle::room_history):
    /// the newest `limit` messages with `after < mid < before`, oldest first, and
    /// whether older ones are left.
    pub(crate) async fn room_history(
        &self,
        room: &str,
        before: Option<i64>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        let from = after.map_or(1, |a| u64::try_from(a.saturating_add(1)).unwrap_or(1));
        let to = crate::protocol::room_address(room);
        let all = Self::scan(&self.history, format!("im.hist.{}", hex(room)), &to, from).await?;
        Ok(page_before(all, before, limit))
    }

    /// Keeps a direct message of the pair `a`, `b` (sent by `from`) without waiting
    /// for JetStream's answer; `on_error` hears of a failure.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append_pair_detached(
        self: &std::sync::Arc<Self>,
        a: &str,
        b: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
        on_error: impl FnOnce(StoreError) + Send + 'static,
    ) {
        let to = if from == a { b } else { a };
        let entry = Logged {
            ts: ts_ms,
            from: from.to_owned(),
            to: Some(to.to_owned()),
            content: content.to_owned(),
            typeu,
            fp: fp.map(str::to_owned),
        };
        let (log, subject, to) = (self.clone(), pair_subject(a, b), to.to_owned());
        tokio::spawn(async move {
            if let Err(e) = log.publish(subject, &to, entry).await {
                on_error(e);
            }
        });
    }

    /// As [`StoreHandle::pair_history`](crate::server::StoreHandle::pair_history): the
    /// newest `limit` messages of the pair with `mid < before`, oldest first, and
    /// whether older ones are left.
    pub(crate) async fn pair_history(
        &self,
        a: &str,
        b: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        let all = Self::scan(&self.pairs, pair_subject(a, b), b, 1).await?;
        Ok(page_before(all, before, limit))
    }

    /// As [`StoreHandle::offline_push`](crate::server::StoreHandle::offline_push).
    pub(crate) async fn offline_push(
        &self,
        to_user: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
    ) -> Result<StoredMessage, StoreError> {
        let entry = Logged {
            ts: ts_ms,
            from: from.to_owned(),
            to: None,
            content: content.to_owned(),
            typeu,
            fp: fp.map(str::to_owned),
        };
        self.publish(format!("im.box.{}", hex(to_user)), to_user, entry)
            .await
    }

    /// As [`StoreHandle::offline_for`](crate::server::StoreHandle::offline_for): the
    /// unexpired messages waiting for `user`, oldest first.
    pub(crate) async fn offline_for(
        &self,
        user: &str,
        now_ms: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let max_age = i64::try_from(self.limits.offline_max_age.as_millis()).unwrap_or(i64::MAX);
        let mut waiting = Self::scan(&self.boxes, format!("im.box.{}", hex(user)), user, 1).await?;
        waiting.retain(|m| now_ms.saturating_sub(m.ts_ms) <= max_age);
        Ok(waiting)
    }

    /// Every user's unexpired offline messages stored at or after `since_ms` (Unix
    /// ms, as NATS stamped them), oldest first, each with its user as `to`.
    pub(crate) async fn boxes_since(
        &self,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let max_age = i64::try_from(self.limits.offline_max_age.as_millis()).unwrap_or(i64::MAX);
        let start_time =
            async_nats::datetime::from_nanos(i128::from(since_ms) * 1_000_000).map_err(other)?;
        let read = async {
            let consumer = self
                .boxes
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: "im.box.>".to_owned(),
                    deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time },
                    ..Default::default()
                })
                .await
                .map_err(other)?;
            // An ordered consumer with nothing to deliver would wait for new messages.
            if consumer.cached_info().num_pending == 0 {
                return Ok(Vec::new());
            }
            let mut messages = consumer.messages().await.map_err(other)?;
            let mut out = Vec::new();
            while let Some(message) = messages.next().await {
                let message = message.map_err(other)?;
                let info = message.info().map_err(other)?;
                let (seq, pending) = (info.stream_sequence, info.pending);
                let user = message
                    .subject
                    .as_str()
                    .strip_prefix("im.box.")
                    .and_then(unhex);
                if let (Some(user), Ok(entry)) =
                    (user, serde_json::from_slice::<Logged>(&message.payload))
                    && now_ms.saturating_sub(entry.ts) <= max_age
                {
                    out.push(StoredMessage {
                        mid: i64::try_from(seq).map_err(other)?,
                        ts_ms: entry.ts,
                        from: entry.from,
                        to: user,
                        content: entry.content,
                        typeu: entry.typeu,
                        fp: entry.fp,
                    });
                }
                if pending == 0 {
                    break;
                }
            }
            Ok(out)
        };
        tokio::time::timeout(SCAN_TIMEOUT, read)
            .await
            .map_err(|_| StoreError::Other(format!("JetStream: no answer in {SCAN_TIMEOUT:?}")))?
    }

    /// As [`StoreHandle::offline_remove`](crate::server::StoreHandle::offline_remove):
    /// takes message `mid` out of `user`'s box; false when it is not there (another
    /// user's message is never touched).
    pub(crate) async fn offline_remove(&self, user: &str, mid: i64) -> Result<bool, StoreError> {
        let Ok(seq) = u64::try_from(mid) else {
            return Ok(false);
        };
        let Ok(message) = self.boxes.get_raw_message(seq).await else {
            return Ok(false);
        };
        if message.subject.as_str() != format!("im.box.{}", hex(user)) {
            return Ok(false);
        }
        match self.boxes.delete_message(seq).await {
            Ok(deleted) => Ok(deleted),
            // Deleted meanwhile (the same ACK twice).
            Err(e) if e.to_string().contains("10043") => Ok(false),
            Err(e) => Err(other(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{hex, unhex};

    #[test]
    fn subject_tokens_give_back_the_names() {
        for name in ["bob", "#lobby", "ü.*>", ""] {
            assert_eq!(unhex(&hex(name)).as_deref(), Some(name));
        }
        for bad in ["6", "zz", "ff", "6g", "+f", "6A"] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
    }
}
