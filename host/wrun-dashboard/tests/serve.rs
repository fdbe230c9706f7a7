//! The server on its own: who gets in, over plain loopback and over TLS.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wrun_dashboard::{Access, Hub, Viewer, serve};
use wrun_proto::tls::{TlsIdentity, secure};

fn access(open_on_loopback: bool) -> Access {
    let hash: [u8; 32] = Sha256::digest(b"the-secret").into();
    Access {
        open_on_loopback,
        tokens: HashMap::from([(hash, Viewer::All)]),
    }
}

/// The status code of `GET path` over `stream`.
async fn status_of(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    path: &str,
    token: Option<&str>,
) -> u16 {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn plain_loopback_is_open_only_when_access_says_so() {
    for (open, expected) in [(true, 200), (false, 401)] {
        let dashboard = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Hub::new(access(open))),
            None,
        )
        .unwrap();
        assert!(dashboard.url().starts_with("http://127.0.0.1:"));
        let tcp = tokio::net::TcpStream::connect(dashboard.addr())
            .await
            .unwrap();
        assert_eq!(status_of(tcp, "/", None).await, expected);
        let tcp = tokio::net::TcpStream::connect(dashboard.addr())
            .await
            .unwrap();
        assert_eq!(status_of(tcp, "/", Some("the-secret")).await, 200);
    }
}

#[tokio::test]
async fn over_tls_every_viewer_needs_a_token_and_plain_http_gets_nothing() {
    let identity = TlsIdentity::generate(&["127.0.0.1".to_owned()]).unwrap();
    let dashboard = serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Hub::new(access(true))),
        Some(identity.acceptor().unwrap()),
    )
    .unwrap();
    assert!(dashboard.url().starts_with("https://"));
    let pinned = identity.certificate_der().to_vec();
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(dashboard.addr())
            .await
            .unwrap();
        secure(tcp, Some(&pinned)).await.unwrap()
    };
    assert_eq!(status_of(connect().await, "/", None).await, 401);
    assert_eq!(
        status_of(connect().await, "/metrics", Some("wrong")).await,
        401
    );
    assert_eq!(
        status_of(connect().await, "/metrics", Some("the-secret")).await,
        200
    );
    let plain = tokio::net::TcpStream::connect(dashboard.addr())
        .await
        .unwrap();
    assert_eq!(status_of(plain, "/", Some("the-secret")).await, 0);
}

#[test]
fn off_loopback_without_tls_is_refused() {
    let error = serve(
        "192.0.2.1:0".parse().unwrap(),
        Arc::new(Hub::default()),
        None,
    )
    .err()
    .unwrap();
    assert!(error.to_string().contains("needs TLS"), "{error}");
}
