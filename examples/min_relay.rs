//! The least a relay must do per message, to measure `im-server` against (see
//! BENCHMARKS.md, "Against a minimal relay"): accept a WebSocket, answer a login, and
//! for each data frame read its `to`, `fp` and `QoS`, hand the text to the receiver's
//! socket and ACK the sender. No QoS tables, no dedup, no store, no limits, no
//! validation: a floor for the work per message, not a server.
//!
//! ```sh
//! cargo run --release --example min_relay -- --listen 127.0.0.1:3001
//! ```
//!
//! It speaks the `mobileimsdk-v6` numbers (ACK type 4), as `im_load --dialect
//! mobileimsdk-v6` expects.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3001")]
    listen: SocketAddr,
}

/// The fields a relay reads; everything else stays in the text it forwards.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type")]
    ty: i32,
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    fp: Option<Cow<'a, str>>,
    #[serde(rename = "QoS", default)]
    qos: bool,
    #[serde(rename = "dataContent", borrow, default)]
    data_content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Login<'a> {
    #[serde(rename = "loginUserId", borrow)]
    user: Cow<'a, str>,
}

type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<String>>>>;

fn frame(ty: i32, from: &str, to: &str, content: &str) -> String {
    serde_json::json!({
        "bridge": false, "type": ty, "dataContent": content, "from": from, "to": to,
        "QoS": false, "typeu": -1, "sm": -1
    })
    .to_string()
}

async fn serve(tcp: TcpStream, routes: Routes) {
    let _ = tcp.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let mut me: Option<String> = None;
    loop {
        let text = tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => continue,
            },
            out = rx.recv() => match out {
                Some(text) => {
                    if sink.send(Message::text(text)).await.is_err() {
                        break;
                    }
                    continue;
                }
                None => break,
            },
        };
        let Ok(head) = serde_json::from_str::<Head>(text.as_str()) else {
            continue;
        };
        let reply = match head.ty {
            // Login: route the user here and say yes.
            0 => {
                let body = head.data_content.as_deref().unwrap_or("{}");
                let Ok(login) = serde_json::from_str::<Login>(body) else {
                    break;
                };
                let user = login.user.into_owned();
                routes.lock().unwrap().insert(user.clone(), tx.clone());
                let reply = frame(50, "0", &user, r#"{"code":0,"firstLoginTime":1}"#);
                me = Some(user);
                Some(reply)
            }
            1 => me.as_deref().map(|u| frame(51, "0", u, "{}")),
            // Data: forward the text as it came, then the relay ACK.
            2 => {
                let to = head.to.as_deref().unwrap_or_default();
                let target = routes.lock().unwrap().get(to).cloned();
                let delivered = target.is_some_and(|t| t.send(text.as_str().to_owned()).is_ok());
                match (&head.fp, head.qos && delivered) {
                    (Some(fp), true) => {
                        let from = head.from.as_deref().unwrap_or_default();
                        Some(frame(4, to, from, fp))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(reply) = reply
            && sink.send(Message::text(reply)).await.is_err()
        {
            break;
        }
    }
    if let Some(user) = me {
        routes.lock().unwrap().remove(&user);
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("min_relay listening on ws://{}/", listener.local_addr()?);
    let routes: Routes = Arc::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(serve(tcp, routes.clone()));
    }
}
