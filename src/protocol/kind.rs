//! Type numbers, what they mean in each direction, and the two dialects.

/// The raw type numbers, named as in the seed's table and upstream's `ProtocalType`
/// (misspellings kept in the docs so they can be searched for).
pub mod wire {
    /// `FROM_CLIENT_TYPE_OF_LOGIN`: login, body `PLoginInfo`.
    pub const LOGIN: i32 = 0;
    /// `FROM_CLIENT_TYPE_OF_KEEP$ALIVE`: keepalive, body `{}`.
    pub const KEEP_ALIVE: i32 = 1;
    /// `FROM_CLIENT_TYPE_OF_COMMON$DATA`: application data, in both directions.
    pub const COMMON_DATA: i32 = 2;
    /// `FROM_CLIENT_TYPE_OF_LOGOUT`: logout, no body.
    pub const LOGOUT: i32 = 3;
    /// `FROM_CLIENT_TYPE_OF_RECIVED`: the ACK of a QoS frame, in both directions; the
    /// acked fingerprint is the `dataContent`.
    pub const RECEIVED: i32 = 4;
    /// `FROM_CLIENT_TYPE_OF_ECHO`: echo request.
    pub const ECHO: i32 = 5;
    /// `FROM_SERVER_TYPE_OF_RESPONSE$LOGIN`: login reply, body `PLoginInfoResponse`.
    pub const RESPONSE_LOGIN: i32 = 50;
    /// `FROM_SERVER_TYPE_OF_RESPONSE$KEEP$ALIVE`: keepalive reply, body `{}`.
    pub const RESPONSE_KEEP_ALIVE: i32 = 51;
    /// `FROM_SERVER_TYPE_OF_RESPONSE$FOR$ERROR`: error, body `PErrorResponse`.
    pub const RESPONSE_FOR_ERROR: i32 = 52;
    /// `FROM_SERVER_TYPE_OF_RESPONSE$ECHO`: echo reply.
    pub const RESPONSE_ECHO: i32 = 53;
    /// In the seed dialect `FROM_SERVER_TYPE_OF_RESPONSE$RECIVED` (the server's ACK); in
    /// the MobileIMSDK v6 dialect `FROM_SERVER_TYPE_OF_KICKOUT`.
    pub const SEED_ACK_OR_V6_KICKOUT: i32 = 54;
    /// The kickout in the seed dialect (an extension: the seed's table has none).
    pub const SEED_KICKOUT: i32 = 55;
    /// Extension (`docs/PROTOCOL-EXTENSIONS.md`): a room or social request from a
    /// client, body [`RoomRequest`](crate::protocol::RoomRequest). Upstream servers
    /// ignore the number; clients send it only to servers that announced `rooms`.
    pub const ROOM_REQUEST: i32 = 100;
    /// Extension: the server's answer to a room request, or a room event, body
    /// [`RoomReply`](crate::protocol::RoomReply). The same number in both dialects.
    pub const ROOM_REPLY: i32 = 150;
}

/// What a frame sent by a client means. The same in both dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKind {
    /// Type 0.
    Login,
    /// Type 1.
    KeepAlive,
    /// Type 2.
    Data,
    /// Type 3.
    Logout,
    /// Type 4: the client's ACK of a QoS frame it received.
    Ack,
    /// Type 5.
    Echo,
    /// Type 100, an extension: a room or social request.
    Room,
    /// Any other number, kept as it was.
    Other(i32),
}

impl ClientKind {
    /// The meaning of a wire number sent by a client.
    pub fn from_type(ty: i32) -> Self {
        match ty {
            wire::LOGIN => Self::Login,
            wire::KEEP_ALIVE => Self::KeepAlive,
            wire::COMMON_DATA => Self::Data,
            wire::LOGOUT => Self::Logout,
            wire::RECEIVED => Self::Ack,
            wire::ECHO => Self::Echo,
            wire::ROOM_REQUEST => Self::Room,
            other => Self::Other(other),
        }
    }

    /// The wire number of this meaning.
    pub fn to_type(self) -> i32 {
        match self {
            Self::Login => wire::LOGIN,
            Self::KeepAlive => wire::KEEP_ALIVE,
            Self::Data => wire::COMMON_DATA,
            Self::Logout => wire::LOGOUT,
            Self::Ack => wire::RECEIVED,
            Self::Echo => wire::ECHO,
            Self::Room => wire::ROOM_REQUEST,
            Self::Other(n) => n,
        }
    }
}

/// What a frame sent by the server means. Which number carries which meaning
/// depends on the [`Dialect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// Type 50.
    LoginResponse,
    /// Type 51.
    KeepAliveResponse,
    /// Type 52.
    Error,
    /// Type 53.
    EchoResponse,
    /// The server ends the session (type 54 in v6, 55 in the seed dialect).
    Kickout,
    /// Type 2: data forwarded from another user or pushed by the server.
    Data,
    /// The server's ACK of a QoS frame (type 4 in both dialects; 54 in the seed's).
    Ack,
    /// Type 150, an extension: a room reply or event.
    Room,
    /// Any other number, kept as it was.
    Other(i32),
}

/// The two numberings of server frames (DESIGN.md §4).
///
/// | meaning | [`Dialect::Seed`] | [`Dialect::MobileImSdkV6`] |
/// |---|---|---|
/// | server ACK | 54 (and 4 is accepted) | 4 |
/// | kickout | 55 | 54 |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// The product's seed table: the server ACKs with type 54; kickout is type 55.
    #[default]
    Seed,
    /// The upstream MobileIMSDK v6 server: the server ACKs with type 4; kickout is 54.
    MobileImSdkV6,
}

impl Dialect {
    /// The meaning of a type number received from the server.
    pub fn server_kind(self, ty: i32) -> ServerKind {
        match (self, ty) {
            (_, wire::RESPONSE_LOGIN) => ServerKind::LoginResponse,
            (_, wire::RESPONSE_KEEP_ALIVE) => ServerKind::KeepAliveResponse,
            (_, wire::RESPONSE_FOR_ERROR) => ServerKind::Error,
            (_, wire::RESPONSE_ECHO) => ServerKind::EchoResponse,
            (_, wire::COMMON_DATA) => ServerKind::Data,
            (_, wire::RECEIVED) => ServerKind::Ack,
            (Self::Seed, wire::SEED_ACK_OR_V6_KICKOUT) => ServerKind::Ack,
            (Self::Seed, wire::SEED_KICKOUT) => ServerKind::Kickout,
            (Self::MobileImSdkV6, wire::SEED_ACK_OR_V6_KICKOUT) => ServerKind::Kickout,
            (_, wire::ROOM_REPLY) => ServerKind::Room,
            (_, other) => ServerKind::Other(other),
        }
    }

    /// The type number a server of this dialect writes for a meaning.
    pub fn server_type(self, kind: ServerKind) -> i32 {
        match (self, kind) {
            (_, ServerKind::LoginResponse) => wire::RESPONSE_LOGIN,
            (_, ServerKind::KeepAliveResponse) => wire::RESPONSE_KEEP_ALIVE,
            (_, ServerKind::Error) => wire::RESPONSE_FOR_ERROR,
            (_, ServerKind::EchoResponse) => wire::RESPONSE_ECHO,
            (_, ServerKind::Data) => wire::COMMON_DATA,
            (Self::Seed, ServerKind::Ack) => wire::SEED_ACK_OR_V6_KICKOUT,
            (Self::MobileImSdkV6, ServerKind::Ack) => wire::RECEIVED,
            (Self::Seed, ServerKind::Kickout) => wire::SEED_KICKOUT,
            (Self::MobileImSdkV6, ServerKind::Kickout) => wire::SEED_ACK_OR_V6_KICKOUT,
            (_, ServerKind::Room) => wire::ROOM_REPLY,
            (_, ServerKind::Other(n)) => n,
        }
    }
}

impl std::str::FromStr for Dialect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "seed" => Ok(Self::Seed),
            "mobileimsdk-v6" | "v6" => Ok(Self::MobileImSdkV6),
            other => Err(format!(
                "unknown dialect `{other}`: expected `seed` or `mobileimsdk-v6`"
            )),
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Seed => "seed",
            Self::MobileImSdkV6 => "mobileimsdk-v6",
        })
    }
}

/// Why the server kicked a session out (the `code` of `PKickoutInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bevy::prelude::Reflect)]
pub enum KickoutCode {
    /// 1, `KICKOUT_FOR_DUPLICATE_LOGIN`: the same user logged in elsewhere.
    DuplicateLogin,
    /// 2, `KICKOUT_FOR_ADMIN`: the host program kicked the user.
    Admin,
    /// Any other number, kept as it was.
    Other(i32),
}

impl KickoutCode {
    /// The meaning of a kickout code number.
    pub fn from_code(code: i32) -> Self {
        match code {
            1 => Self::DuplicateLogin,
            2 => Self::Admin,
            n => Self::Other(n),
        }
    }

    /// The code number on the wire.
    pub fn code(self) -> i32 {
        match self {
            Self::DuplicateLogin => 1,
            Self::Admin => 2,
            Self::Other(n) => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects_disagree_only_on_54_and_55() {
        for ty in -5..200 {
            let seed = Dialect::Seed.server_kind(ty);
            let v6 = Dialect::MobileImSdkV6.server_kind(ty);
            match ty {
                54 => {
                    assert_eq!(seed, ServerKind::Ack);
                    assert_eq!(v6, ServerKind::Kickout);
                }
                55 => {
                    assert_eq!(seed, ServerKind::Kickout);
                    assert_eq!(v6, ServerKind::Other(55));
                }
                _ => assert_eq!(seed, v6, "type {ty}"),
            }
        }
    }

    #[test]
    fn the_numbers_are_upstreams_in_each_dialect() {
        use ServerKind::*;
        // (type, meaning in the seed dialect, meaning in v6), from the seed's table,
        // upstream's `ProtocalType` and the v6.5 capture (PROTOCOL.md).
        let read = [
            (2, Data, Data),
            (4, Ack, Ack),
            (50, LoginResponse, LoginResponse),
            (51, KeepAliveResponse, KeepAliveResponse),
            (52, Error, Error),
            (53, EchoResponse, EchoResponse),
            (54, Ack, Kickout),
            (55, Kickout, Other(55)),
            (150, Room, Room),
        ];
        for (ty, seed, v6) in read {
            assert_eq!(Dialect::Seed.server_kind(ty), seed, "seed reads {ty}");
            assert_eq!(Dialect::MobileImSdkV6.server_kind(ty), v6, "v6 reads {ty}");
        }
        // (meaning, what a seed server writes, what a v6 server writes)
        let written = [
            (Data, 2, 2),
            (Ack, 54, 4),
            (LoginResponse, 50, 50),
            (KeepAliveResponse, 51, 51),
            (Error, 52, 52),
            (EchoResponse, 53, 53),
            (Kickout, 55, 54),
            (Room, 150, 150),
        ];
        for (kind, seed, v6) in written {
            assert_eq!(
                Dialect::Seed.server_type(kind),
                seed,
                "seed writes {kind:?}"
            );
            assert_eq!(
                Dialect::MobileImSdkV6.server_type(kind),
                v6,
                "v6 writes {kind:?}"
            );
        }
        let client = [
            (0, ClientKind::Login),
            (1, ClientKind::KeepAlive),
            (2, ClientKind::Data),
            (3, ClientKind::Logout),
            (4, ClientKind::Ack),
            (5, ClientKind::Echo),
            (100, ClientKind::Room),
        ];
        for (ty, kind) in client {
            assert_eq!(ClientKind::from_type(ty), kind, "{ty}");
            assert_eq!(kind.to_type(), ty, "{kind:?}");
        }
        assert_eq!(
            (
                KickoutCode::DuplicateLogin.code(),
                KickoutCode::Admin.code()
            ),
            (1, 2)
        );
    }

    #[test]
    fn both_dialects_accept_a_type_4_ack() {
        assert_eq!(Dialect::Seed.server_kind(4), ServerKind::Ack);
        assert_eq!(Dialect::MobileImSdkV6.server_kind(4), ServerKind::Ack);
    }

    #[test]
    fn server_numbers_round_trip_in_each_dialect() {
        for d in [Dialect::Seed, Dialect::MobileImSdkV6] {
            for k in [
                ServerKind::LoginResponse,
                ServerKind::KeepAliveResponse,
                ServerKind::Error,
                ServerKind::EchoResponse,
                ServerKind::Kickout,
                ServerKind::Data,
                ServerKind::Ack,
                ServerKind::Other(99),
            ] {
                assert_eq!(d.server_kind(d.server_type(k)), k, "{d} {k:?}");
            }
        }
    }

    #[test]
    fn client_numbers_round_trip_and_unknowns_survive() {
        for ty in -3..120 {
            assert_eq!(ClientKind::from_type(ty).to_type(), ty);
        }
        assert_eq!(ClientKind::from_type(99), ClientKind::Other(99));
    }

    #[test]
    fn dialect_parses_from_its_command_line_names() {
        assert_eq!("seed".parse::<Dialect>(), Ok(Dialect::Seed));
        assert_eq!(
            "mobileimsdk-v6".parse::<Dialect>(),
            Ok(Dialect::MobileImSdkV6)
        );
        assert!("v7".parse::<Dialect>().is_err());
    }
}
