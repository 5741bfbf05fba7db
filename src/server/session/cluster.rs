//! A session's side of the cluster (`server::cluster`): claiming its user among the
//! nodes after a login, and handing messages to the node their receiver is on.

use super::social::Job;
use super::*;
use crate::protocol::{Member, RoomReply, RoomRequest};
use crate::server::cluster::{Claim, Forwarded};

impl Session {
    /// After a login here: claims the user among the nodes. A session that lost (a
    /// newer one is online on another node) is kicked, as on one node; one whose
    /// claim failed (NATS is away) stays, reachable from this node only.
    pub(super) async fn claim(&mut self, user: &str, t: i64, fresh: bool) {
        let Some(cluster) = self.shared.cluster.get().cloned() else {
            return;
        };
        match cluster.claim(user, t, fresh).await {
            Ok(Claim::Won) => {}
            Ok(Claim::Lost) => {
                let state = self.shared.lock();
                if let Some(entry) = state.sessions.get(&self.id) {
                    let _ = entry.tx.send(Command::Kick {
                        code: KickoutCode::DuplicateLogin,
                        reason: None,
                    });
                }
            }
            Err(e) => {
                self.shared.metrics.reject(RejectReason::ClusterFailed);
                tracing::warn!(%user, "cluster: presence not claimed: {e}");
            }
        }
    }

    /// A message for a user online on `node`: forwarded, and ACKed to its sender once
    /// that node accepted it, or (`ack_on_receipt` there) once the receiver ACKed it.
    /// Without an answer the sender gets no ACK and resends; a receiver gone from
    /// there meanwhile takes the offline path here.
    pub(super) async fn forward(&mut self, user: &str, node: &str, to: String, frame: Frame) {
        let shared = self.shared.clone();
        let Some(cluster) = shared.cluster.get().cloned() else {
            return;
        };
        let qos_fp = frame.fp.clone().filter(|_| frame.qos);
        let Ok(text) = frame.encode_with_limit(shared.config.max_frame_bytes) else {
            return;
        };
        match cluster.forward(node, text).await {
            Ok(Forwarded::Accepted) => {
                self.keep_pair_history(user, &to, &frame);
                if let Some(fp) = &qos_fp {
                    let ack = Frame::server_ack(self.dialect(), &to, user, fp);
                    self.push(&ack, ServerKind::Ack);
                }
            }
            // The receiver's own ACK comes back from there.
            Ok(Forwarded::Receipt) => self.keep_pair_history(user, &to, &frame),
            Ok(Forwarded::Acked) => {
                if let Some(fp) = &qos_fp {
                    let ack = Frame::server_ack(self.dialect(), &to, user, fp);
                    self.push(&ack, ServerKind::Ack);
                }
            }
            Ok(Forwarded::Offline) => {
                let host_stored = shared.hooks.on_offline_message(&frame);
                if host_stored {
                    if let Some(fp) = &qos_fp {
                        let ack = Frame::server_ack(self.dialect(), &to, user, fp);
                        self.push(&ack, ServerKind::Ack);
                    }
                } else if shared.config.extensions && qos_fp.is_some() {
                    self.jobs.push(Job::Offline { to, frame });
                    Box::pin(self.run_jobs()).await;
                }
            }
            Ok(Forwarded::Busy) => {
                if qos_fp.is_some() {
                    Metrics::inc(&shared.metrics.receiver_busy);
                    self.push_error(room_code::RECEIVER_BUSY, &frame.to_json());
                }
            }
            Err(e) => {
                shared.metrics.reject(RejectReason::ClusterFailed);
                tracing::debug!(%node, "cluster: message not forwarded: {e}");
            }
        }
    }

    /// A members request: this node's members and every other node's; 404 when no
    /// node has the room.
    pub(super) async fn members_reply(
        &mut self,
        user: &str,
        request: RoomRequest,
        local: Option<Vec<Member>>,
    ) {
        let Some(cluster) = self.shared.cluster.get().cloned() else {
            return;
        };
        let room = request.room.clone().unwrap_or_default();
        let known_here = local.is_some();
        let members = cluster.all_members(&room, local.unwrap_or_default()).await;
        if members.is_empty() && !known_here {
            let reply = RoomReply::to(&request, 404).msg("no such room");
            return self.reply(user, &reply);
        }
        let mut reply = RoomReply::to(&request, 0);
        reply.members = members;
        self.reply(user, &reply);
    }
}
