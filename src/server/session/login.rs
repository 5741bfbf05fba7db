//! Login, re-login, duplicate logins and keepalives.

use super::*;

impl Session {
    /// The login reply: code 0 with the `firstLoginTime` and the extensions this
    /// server serves, or a refusal (time -1, no extensions).
    fn push_login_reply(&mut self, user: &str, code: i32, first_login_time: i64) {
        let ext = if code == 0 {
            served_extensions(&self.shared.config)
        } else {
            Vec::new()
        };
        let reply = Frame::login_response(
            user,
            &LoginResponse {
                code,
                first_login_time,
                ext,
            },
        );
        self.push(&reply, ServerKind::LoginResponse);
    }

    pub(super) fn login(&mut self, frame: &Frame) -> Step {
        let shared = self.shared.clone();
        let info = match decode_body::<LoginInfo>(frame.data_content.as_deref()) {
            Ok(info) if info.login_user_id.is_empty() => Err("loginUserId is empty".to_owned()),
            // "0" is the server: a user with that id could pass for it.
            Ok(info) if info.login_user_id == crate::protocol::SERVER_ID => {
                Err("loginUserId \"0\" is the server's".to_owned())
            }
            // Room addresses start with '#': no user may look like one.
            Ok(info) if info.login_user_id.starts_with(ROOM_PREFIX) => {
                Err("loginUserId may not start with '#'".to_owned())
            }
            Ok(info) => Ok(info),
            Err(e) => Err(e.to_string()),
        };
        let info: LoginInfo = match info {
            Ok(info) => info,
            Err(why) => {
                // Upstream closes without a word; the client gets a failed login reply.
                tracing::debug!(session = self.id, "refusing a bad login: {why}");
                shared.metrics.reject(RejectReason::BadLogin);
                self.push_login_reply(frame.from_id(), ResultCode::InvalidProtocol.code(), -1);
                return Step::bye(LogoutReason::Closed);
            }
        };
        let user = info.login_user_id.clone();
        if self.user.as_deref() == Some(user.as_str()) {
            // Already logged in on this socket: answer again without checking the token.
            let t = if info.first_login_time > 0 {
                info.first_login_time
            } else {
                self.first_login_time
            };
            self.push_login_reply(&user, 0, t);
            return Step::Continue;
        }
        let code = shared.hooks.verify_login(
            &user,
            &info.login_token,
            info.extra.as_deref(),
            info.app.as_deref(),
        );
        if code != 0 {
            shared.metrics.reject(RejectReason::LoginRefused);
            self.push_login_reply(&user, code, -1);
            return Step::bye(LogoutReason::Closed);
        }
        let t = if info.first_login_time <= 0 {
            now_ms()
        } else {
            info.first_login_time
        };
        self.push_login_reply(&user, 0, t);
        Metrics::inc(&shared.metrics.logins_ok);

        let mut calls = Vec::new();
        let mut kick_self = false;
        {
            let mut state = shared.lock();
            // A different user on the same socket: the old one leaves first.
            if let Some(old) = self.user.take()
                && state.online.get(&old).is_some_and(|r| r.session == self.id)
            {
                state.online.remove(&old);
                calls.push(HookCall::Logout(old, LogoutReason::Replaced));
            }
            if let Some(entry) = state.sessions.get_mut(&self.id) {
                entry.user = Some(user.clone());
            }
            let me = Registered {
                session: self.id,
                first_login_time: t,
            };
            match state.online.get(&user).copied() {
                None => {
                    state.online.insert(user.clone(), me);
                    calls.push(HookCall::Login(user.clone(), t));
                }
                Some(old) if info.first_login_time <= 0 || t > old.first_login_time => {
                    // A fresh or newer login: the old socket is kicked.
                    if let Some(entry) = state.sessions.get(&old.session) {
                        let _ = entry.tx.send(Command::Kick {
                            code: KickoutCode::DuplicateLogin,
                            reason: None,
                        });
                    }
                    state.online.insert(user.clone(), me);
                    calls.push(HookCall::Logout(
                        user.clone(),
                        LogoutReason::Kicked(KickoutCode::DuplicateLogin),
                    ));
                    calls.push(HookCall::Login(user.clone(), t));
                }
                Some(old) if t < old.first_login_time => {
                    // A stale session coming back: it is the one kicked.
                    kick_self = true;
                }
                Some(_) => {
                    // Equal times: routing moves here, the old socket stays open.
                    state.online.insert(user.clone(), me);
                    calls.push(HookCall::Logout(user.clone(), LogoutReason::Replaced));
                    calls.push(HookCall::Login(user.clone(), t));
                }
            }
            // Queued in the order decided here; run in that order, outside the lock.
            state.hook_queue.extend(calls);
        }
        tracing::debug!(session = self.id, %user, first_login_time = t, kick_self, "logged in");
        self.user = Some(user.clone());
        self.first_login_time = t;
        shared.run_hooks();
        if kick_self {
            Metrics::inc(&shared.metrics.kickouts);
            let kick = Frame::kickout(
                self.dialect(),
                &user,
                &KickoutInfo {
                    code: KickoutCode::DuplicateLogin.code(),
                    reason: None,
                },
            );
            self.push(&kick, ServerKind::Kickout);
            return Step::bye(LogoutReason::Kicked(KickoutCode::DuplicateLogin));
        }
        {
            // Frames still pending from an earlier link go first, then the rooms
            // hear that a user back within the grace period is online again.
            let mut state = shared.lock();
            shared.login_flush(&mut state, &user, &mut self.out);
            // The client re-joins its rooms after a login, which catches up anyway.
            state.behind.remove(&user);
            let notices = state.rooms.came_online(&user);
            shared.notify(&mut state, notices);
        }
        self.jobs.push(Job::DeliverOffline);
        #[cfg(feature = "cluster")]
        if shared.cluster.get().is_some() {
            self.jobs.push(Job::Claim {
                t,
                fresh: info.first_login_time <= 0,
            });
        }
        Step::Continue
    }

    /// The reply goes to the socket the user is routed to, as upstream's does.
    pub(super) fn keepalive(&mut self, user: &str) {
        let shared = self.shared.clone();
        let reply = Frame::keepalive_response(user);
        let state = shared.lock();
        match state.online.get(user).map(|r| r.session) {
            Some(s) if s == self.id => {
                drop(state);
                self.push(&reply, ServerKind::KeepAliveResponse);
            }
            Some(s) => {
                let out = Outgoing {
                    text: reply.to_json(),
                    kind: ServerKind::KeepAliveResponse,
                };
                if let Err(DeliverError::Refused(r)) = shared.send_to_session(&state, s, out) {
                    shared.metrics.reject(r);
                }
            }
            None => {}
        }
    }
}
