//! The benchmark floor for `scripts/bench.sh transit`: an HTTPS server on the daemon's own TLS and
//! HTTP stack (rustls with aws-lc-rs, hyper via axum, tokio) that answers every request with a
//! fixed JSON body, as large as a transit encrypt answer.
//!
//!   https_floor ADDRESS CERT_FILE KEY_FILE
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: any failure aborts the run

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio_rustls::TlsAcceptor;

const BODY: &str = r#"{"request_id":"00000000-0000-0000-0000-000000000000","lease_id":"","renewable":false,"lease_duration":0,"data":{"ciphertext":"vault:v1:8SDd3WHDOjf7mq69CyCqYjBXAiQQAVZRkFM13ok481zoCmHnSeDX9vyf7w==","key_version":1},"wrap_info":null,"warnings":null,"auth":null}"#;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let tls =
        sealkeeper::http::tls::server_config(a[2].as_ref(), a[3].as_ref(), None, false, false)
            .unwrap();
    let acceptor = TlsAcceptor::from(tls);
    let router =
        Router::new().fallback(|| async { ([("content-type", "application/json")], BODY) });
    let listener = tokio::net::TcpListener::bind(&a[1]).await.unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            if let Ok(s) = acceptor.accept(stream).await {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), TowerToHyperService::new(router))
                    .await;
            }
        });
    }
}
