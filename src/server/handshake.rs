//! The HTTP side of a connection: read the upgrade request, answer it the way
//! upstream's Netty gateway does, and hand the socket to the WebSocket layer.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::metrics::RejectReason;

/// The largest request head accepted (upstream's HTTP aggregator limit).
const MAX_REQUEST_HEAD: usize = 65536;

/// What to do with a connection after its request head was read.
#[derive(Debug)]
pub(crate) enum Handshake {
    /// Upgraded: the 101 reply is written; `rest` holds bytes read past the request.
    Upgraded {
        /// Bytes the client sent after the request head (the start of its frames).
        rest: Vec<u8>,
    },
    /// The path is not ours: upstream answers nothing and holds the socket until the
    /// read timeout.
    WrongPath,
    /// Answered with an HTTP error, or the peer went away; close it.
    Refused(RejectReason),
}

struct Request<'a> {
    method: &'a str,
    target: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> Request<'a> {
    fn parse(head: &'a str) -> Option<Self> {
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?;
        let target = first.next()?;
        let version = first.next()?;
        if !version.starts_with("HTTP/1.") || first.next().is_some() {
            return None;
        }
        let mut headers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':')?;
            headers.push((name.trim(), value.trim()));
        }
        Some(Self {
            method,
            target,
            headers,
        })
    }

    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

async fn reply<S: AsyncWrite + Unpin>(stream: &mut S, status: &str, extra: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.flush().await;
}

/// Reads the request head from `stream` and answers it: 101 for a proper upgrade on
/// `path`, nothing for another path, an HTTP error otherwise. The caller bounds the
/// time this takes.
pub(crate) async fn upgrade<S>(stream: &mut S, path: &str) -> std::io::Result<Handshake>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    // Only the bytes after the previous search can complete the head, so a client
    // that sends one byte at a time costs linear work, not quadratic.
    let mut searched = 0;
    let end = loop {
        if let Some(end) = find_head_end(&buf[searched..]) {
            break searched + end;
        }
        searched = buf.len().saturating_sub(3);
        if buf.len() > MAX_REQUEST_HEAD {
            reply(stream, "413 Request Entity Too Large", "", "").await;
            return Ok(Handshake::Refused(RejectReason::BadHandshake));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Handshake::Refused(RejectReason::BadHandshake));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let Some(request) = Request::parse(&head) else {
        reply(stream, "400 Bad Request", "", "malformed request").await;
        return Ok(Handshake::Refused(RejectReason::BadHandshake));
    };
    if request.target != path {
        return Ok(Handshake::WrongPath);
    }
    if request.method != "GET" {
        reply(stream, "403 Forbidden", "", "").await;
        return Ok(Handshake::Refused(RejectReason::NotWebSocket));
    }
    if !request.header_has_token("upgrade", "websocket") {
        reply(
            stream,
            "400 Bad Request",
            "",
            "not a WebSocket handshake request: missing upgrade",
        )
        .await;
        return Ok(Handshake::Refused(RejectReason::NotWebSocket));
    }
    if request.header("sec-websocket-version") != Some("13") {
        reply(
            stream,
            "426 Upgrade Required",
            "sec-websocket-version: 13\r\n",
            "",
        )
        .await;
        return Ok(Handshake::Refused(RejectReason::BadHandshake));
    }
    let Some(key) = request
        .header("sec-websocket-key")
        .filter(|k| !k.is_empty())
    else {
        reply(
            stream,
            "400 Bad Request",
            "",
            "not a WebSocket request: missing key",
        )
        .await;
        return Ok(Handshake::Refused(RejectReason::BadHandshake));
    };
    // The same three headers upstream answers with: no subprotocol, no extensions.
    let accept = derive_accept_key(key.as_bytes());
    let text = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    );
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await?;
    Ok(Handshake::Upgraded { rest })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(request: &str) -> (Handshake, String) {
        let (mut client, mut server) = tokio::io::duplex(1 << 17);
        client.write_all(request.as_bytes()).await.unwrap();
        let outcome = upgrade(&mut server, "/websocket").await.unwrap();
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        (outcome, answer)
    }

    const KEY: &str =
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

    #[tokio::test]
    async fn a_proper_upgrade_gets_upstreams_three_headers() {
        let req = format!(
            "GET /websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: mobileimsdk\r\n{KEY}\r\nEXTRA"
        );
        let (outcome, answer) = run(&req).await;
        assert!(matches!(outcome, Handshake::Upgraded { rest } if rest == b"EXTRA"));
        assert_eq!(
            answer,
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn other_paths_get_no_answer() {
        for path in ["/websocket?uid=1", "/websocket/", "/", "/ws"] {
            let req = format!(
                "GET {path} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{KEY}\r\n"
            );
            let (outcome, answer) = run(&req).await;
            assert!(matches!(outcome, Handshake::WrongPath), "{path}");
            assert_eq!(answer, "", "{path}");
        }
    }

    #[tokio::test]
    async fn plain_http_gets_400_missing_upgrade() {
        let (outcome, answer) = run("GET /websocket HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(matches!(
            outcome,
            Handshake::Refused(RejectReason::NotWebSocket)
        ));
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(answer.ends_with("not a WebSocket handshake request: missing upgrade"));
    }

    #[tokio::test]
    async fn wrong_version_and_garbage_are_refused() {
        let req = "GET /websocket HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Key: a\r\nSec-WebSocket-Version: 8\r\n\r\n";
        let (outcome, answer) = run(req).await;
        assert!(matches!(
            outcome,
            Handshake::Refused(RejectReason::BadHandshake)
        ));
        assert!(answer.starts_with("HTTP/1.1 426"));
        let (outcome, _) = run("\x00\x01garbage\r\n\r\n").await;
        assert!(matches!(
            outcome,
            Handshake::Refused(RejectReason::BadHandshake)
        ));
    }
}
