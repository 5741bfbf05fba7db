//! Where room and direct history and offline boxes live: this node's store, or, in
//! a cluster, the streams every node shares (`cluster::SharedLog`). Private rooms
//! and their members stay in the node's store either way.

#[cfg(feature = "cluster")]
use std::sync::Arc;

#[cfg(feature = "cluster")]
use super::cluster::SharedLog;
use super::state::Shared;
use super::store::{StoreError, StoreHandle, StoredMessage};

/// The history and offline boxes this server uses.
pub(crate) enum Log<'a> {
    /// This node's store.
    Local(&'a StoreHandle),
    /// The cluster's streams.
    #[cfg(feature = "cluster")]
    Shared(&'a Arc<SharedLog>),
}

impl Shared {
    /// Where this server keeps room history and offline boxes.
    pub(crate) fn log(&self) -> Log<'_> {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = self.cluster.get() {
            return Log::Shared(&cluster.log);
        }
        Log::Local(&self.store)
    }
}

impl Log<'_> {
    /// Stores a room message; its id increases per room.
    pub(crate) async fn append_room(
        &self,
        room: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
    ) -> Result<StoredMessage, StoreError> {
        match self {
            Log::Local(s) => s.append_room(room, from, content, typeu, fp, ts_ms).await,
            #[cfg(feature = "cluster")]
            Log::Shared(l) => l.append_room(room, from, content, typeu, fp, ts_ms).await,
        }
    }

    /// The newest `limit` messages of `room` with `after < mid < before`, oldest
    /// first, and whether older ones are left.
    pub(crate) async fn room_history(
        &self,
        room: &str,
        before: Option<i64>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        match self {
            Log::Local(s) => s.room_history(room, before, after, limit).await,
            #[cfg(feature = "cluster")]
            Log::Shared(l) => l.room_history(room, before, after, limit).await,
        }
    }

    /// Keeps a direct message of the pair `a`, `b` (sent by `from`) without waiting;
    /// `on_error` hears of a failure.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append_pair_detached(
        &self,
        a: &str,
        b: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
        on_error: impl FnOnce(StoreError) + Send + 'static,
    ) {
        match self {
            Log::Local(s) => {
                s.append_pair_detached(a, b, from, content, typeu, fp, ts_ms, on_error)
            }
            #[cfg(feature = "cluster")]
            Log::Shared(l) => {
                l.append_pair_detached(a, b, from, content, typeu, fp, ts_ms, on_error)
            }
        }
    }

    /// The newest `limit` direct messages of the pair `a`, `b` with `mid < before`,
    /// oldest first, and whether older ones are left.
    pub(crate) async fn pair_history(
        &self,
        a: &str,
        b: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        match self {
            Log::Local(s) => s.pair_history(a, b, before, limit).await,
            #[cfg(feature = "cluster")]
            Log::Shared(l) => l.pair_history(a, b, before, limit).await,
        }
    }

    /// Stores a message for `to_user`'s next login.
    pub(crate) async fn offline_push(
        &self,
        to_user: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
    ) -> Result<StoredMessage, StoreError> {
        match self {
            Log::Local(s) => {
                s.offline_push(to_user, from, content, typeu, fp, ts_ms)
                    .await
            }
            #[cfg(feature = "cluster")]
            Log::Shared(l) => {
                l.offline_push(to_user, from, content, typeu, fp, ts_ms)
                    .await
            }
        }
    }

    /// The unexpired messages waiting for `user`, oldest first.
    pub(crate) async fn offline_for(
        &self,
        user: &str,
        now_ms: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        match self {
            Log::Local(s) => s.offline_for(user, now_ms).await,
            #[cfg(feature = "cluster")]
            Log::Shared(l) => l.offline_for(user, now_ms).await,
        }
    }

    /// Takes message `mid` out of `user`'s box; false when it is not there.
    pub(crate) async fn offline_remove(&self, user: &str, mid: i64) -> Result<bool, StoreError> {
        match self {
            Log::Local(s) => s.offline_remove(user, mid).await,
            #[cfg(feature = "cluster")]
            Log::Shared(l) => l.offline_remove(user, mid).await,
        }
    }
}
