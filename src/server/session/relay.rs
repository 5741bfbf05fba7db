//! Data frames: to the server, to a user, to a room; the relay ACK.

use super::*;

impl Session {
    pub(super) fn data(&mut self, user: &str, mut frame: Frame, now: Instant) {
        let shared = self.shared.clone();
        if frame
            .fp
            .as_ref()
            .is_some_and(|fp| fp.len() > MAX_FINGERPRINT_BYTES)
        {
            shared.metrics.reject(RejectReason::BadFrame);
            self.push_error(
                ERROR_INVALID_FRAME,
                &format!("fingerprint longer than {MAX_FINGERPRINT_BYTES} bytes"),
            );
            return;
        }
        // Deliberate difference: nobody can send as someone else.
        frame.from = Some(user.to_owned());
        // The message id and "stored" are the server's to give: a forged `mid` would
        // make the receiver's ACK take another message out of its offline box.
        frame.mid = None;
        frame.stored = false;
        let Some(to) = frame.to.clone() else {
            shared.metrics.reject(RejectReason::NoReceiver);
            return;
        };
        let dialect = self.dialect();
        let qos_fp = frame.fp.clone().filter(|_| frame.qos);
        if to == crate::protocol::SERVER_ID {
            if let Some(fp) = &qos_fp {
                let duplicate = shared.lock().dedup.seen(user, fp, now);
                let ack = Frame::server_ack(dialect, crate::protocol::SERVER_ID, user, fp);
                self.push(&ack, ServerKind::Ack);
                if duplicate {
                    Metrics::inc(&shared.metrics.c2s_duplicates);
                    return;
                }
            }
            shared.hooks.on_c2s_message(&frame);
            return;
        }
        // The social extension: stored resends, rooms, block lists, moderation.
        if shared.config.extensions {
            // A resend of a message already stored (its ACK was lost): the same ACK again.
            if let Some(fp) = &qos_fp {
                let ack = shared.lock().recent_acks.get(user, fp).cloned();
                if let Some(ack) = ack {
                    Metrics::inc(&shared.metrics.c2s_duplicates);
                    self.push(&ack, ServerKind::Ack);
                    return;
                }
            }
            if let Some(room) = room_of_address(&to) {
                let room = room.to_owned();
                return self.room_message(user, room, frame);
            }
            let blocked = shared
                .lock()
                .blocks
                .get(&to)
                .is_some_and(|b| b.contains(user));
            if blocked {
                shared.metrics.reject(RejectReason::Refused);
                self.push_error(room_code::FORBIDDEN, &frame.to_json());
                return;
            }
            if !self.moderate(user, &to, &mut frame) {
                return;
            }
        }
        // Rewriting `from` (and writing the fields the sender left out) can push a
        // frame over the limit; the receiver's link would be closed by it.
        let Ok(text) = frame.encode_with_limit(shared.config.max_frame_bytes) else {
            shared.metrics.reject(RejectReason::FrameTooLarge);
            self.push_error(
                ERROR_INVALID_FRAME,
                "the forwarded frame would exceed the frame limit",
            );
            return;
        };
        let delivered = {
            let mut state = shared.lock();
            shared.deliver(
                &mut state,
                &to,
                &frame,
                text,
                Some((self.id, &mut self.out)),
            )
        };
        let relay_ack = match delivered {
            Ok(()) => {
                self.keep_pair_history(user, &to, &frame);
                // With ACK on receipt, the receiver's own ACK is forwarded instead.
                !shared.config.ack_on_receipt
            }
            Err(e) => {
                // Online on another node: forwarded, and ACKed once that node accepts.
                #[cfg(feature = "cluster")]
                if e == DeliverError::NotOnline
                    && let Some(node) = shared.cluster.get().and_then(|c| c.route(&to))
                {
                    self.jobs.push(Job::Forward { node, to, frame });
                    return;
                }
                if let DeliverError::Refused(r) = e {
                    shared.metrics.reject(r);
                }
                let host_stored = shared.hooks.on_offline_message(&frame);
                let offline_box = shared.config.extensions && e == DeliverError::NotOnline;
                if !host_stored && offline_box && qos_fp.is_some() {
                    // Stored in the receiver's offline box; the ACK waits for the commit.
                    self.jobs.push(Job::Offline { to, frame });
                    return;
                }
                if !host_stored && matches!(e, DeliverError::Refused(_)) && qos_fp.is_some() {
                    // Never a silent refusal: the sender resends after a back-off.
                    Metrics::inc(&shared.metrics.receiver_busy);
                    self.push_error(room_code::RECEIVER_BUSY, &frame.to_json());
                    return;
                }
                host_stored
            }
        };
        if relay_ack && let Some(fp) = &qos_fp {
            // The relay ACK: from the receiver, to the sender, down the sender's socket.
            let ack = Frame::server_ack(dialect, &to, user, fp);
            self.push(&ack, ServerKind::Ack);
        }
    }
}
