/// A result code from the seed's table (upstream `ErrorCode`), or any other number
/// (login hooks answer their own codes; upstream suggests values above 1024).
///
/// The docs give the seed's names, misspellings included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bevy::prelude::Reflect)]
pub enum ResultCode {
    /// 0, `COMMON_CODE_OK`.
    Ok,
    /// 1, `COMMON_NO_LOGIN`: not logged in. Returned by a local send before login.
    NoLogin,
    /// 2, `COMMON_UNKNOW_ERROR`.
    UnknownError,
    /// 3, `COMMON_DATA_SEND_FAILD`: the link could not take the frame.
    DataSendFailed,
    /// 4, `COMMON_INVALID_PROTOCAL`: the frame is invalid (too large, no receiver...).
    InvalidProtocol,
    /// 201, `BREOKEN_CONNECT_TO_SERVER`: the link to the server broke.
    BrokenConnectToServer,
    /// 202, `BAD_CONNECT_TO_SERVER`: the connection could not be started.
    BadConnectToServer,
    /// 203, `CLIENT_SDK_NO_INITIALED`: the client is released or was never set up.
    ClientSdkNotInitialized,
    /// 204, `LOCAL_NETWORK_NOT_WORKING`.
    LocalNetworkNotWorking,
    /// 205, `TO_SERVER_NET_INFO_NOT_SETUP`: no server URL was configured.
    ToServerNetInfoNotSetup,
    /// 301, `RESPONSE_FOR_UNLOGIN`: the server says this link is not logged in.
    ResponseForUnlogin,
    /// Any other number, kept as it was.
    Other(i32),
}

impl ResultCode {
    /// The code for a number.
    pub fn from_code(code: i32) -> Self {
        match code {
            0 => Self::Ok,
            1 => Self::NoLogin,
            2 => Self::UnknownError,
            3 => Self::DataSendFailed,
            4 => Self::InvalidProtocol,
            201 => Self::BrokenConnectToServer,
            202 => Self::BadConnectToServer,
            203 => Self::ClientSdkNotInitialized,
            204 => Self::LocalNetworkNotWorking,
            205 => Self::ToServerNetInfoNotSetup,
            301 => Self::ResponseForUnlogin,
            n => Self::Other(n),
        }
    }

    /// The number on the wire.
    pub fn code(self) -> i32 {
        match self {
            Self::Ok => 0,
            Self::NoLogin => 1,
            Self::UnknownError => 2,
            Self::DataSendFailed => 3,
            Self::InvalidProtocol => 4,
            Self::BrokenConnectToServer => 201,
            Self::BadConnectToServer => 202,
            Self::ClientSdkNotInitialized => 203,
            Self::LocalNetworkNotWorking => 204,
            Self::ToServerNetInfoNotSetup => 205,
            Self::ResponseForUnlogin => 301,
            Self::Other(n) => n,
        }
    }

    /// Whether this is `COMMON_CODE_OK`.
    pub fn is_ok(self) -> bool {
        self == Self::Ok
    }
}

impl From<i32> for ResultCode {
    fn from(code: i32) -> Self {
        Self::from_code(code)
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Ok => "ok",
            Self::NoLogin => "not logged in",
            Self::UnknownError => "unknown error",
            Self::DataSendFailed => "data send failed",
            Self::InvalidProtocol => "invalid protocol",
            Self::BrokenConnectToServer => "broken connection to server",
            Self::BadConnectToServer => "bad connection to server",
            Self::ClientSdkNotInitialized => "client not initialised",
            Self::LocalNetworkNotWorking => "local network not working",
            Self::ToServerNetInfoNotSetup => "server address not set up",
            Self::ResponseForUnlogin => "server says not logged in",
            Self::Other(_) => "code",
        };
        write!(f, "{} ({name})", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_table_numbers_are_exact() {
        let table = [
            (0, ResultCode::Ok),
            (1, ResultCode::NoLogin),
            (2, ResultCode::UnknownError),
            (3, ResultCode::DataSendFailed),
            (4, ResultCode::InvalidProtocol),
            (201, ResultCode::BrokenConnectToServer),
            (202, ResultCode::BadConnectToServer),
            (203, ResultCode::ClientSdkNotInitialized),
            (204, ResultCode::LocalNetworkNotWorking),
            (205, ResultCode::ToServerNetInfoNotSetup),
            (301, ResultCode::ResponseForUnlogin),
        ];
        for (n, c) in table {
            assert_eq!(ResultCode::from_code(n), c);
            assert_eq!(c.code(), n);
        }
    }

    #[test]
    fn unknown_codes_survive() {
        for n in [-1, 5, 1025, i32::MAX, i32::MIN] {
            assert_eq!(ResultCode::from_code(n), ResultCode::Other(n));
            assert_eq!(ResultCode::from_code(n).code(), n);
        }
    }
}
