//! The mock Kubernetes API server the controller tests talk to: kube's tower-test mock
//! service, answering each request in order after checking its method and path (as the
//! controller-rs ApiServerVerifier does).
#![allow(dead_code)]

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;
use std::time::Duration;
use tower_test::mock::{Handle, SendResponse};

/// The mock API server: answers the controller's requests one at a time, in order.
pub struct ApiServer(pub Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    pub async fn expect(
        &mut self,
        method: &str,
        path: &str,
    ) -> (Value, SendResponse<Response<Body>>) {
        let (request, respond) =
            tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
                .await
                .unwrap_or_else(|_| panic!("no {method} {path} within 5 s"))
                .expect("the client is gone");
        assert_eq!(request.method().as_str(), method, "{}", request.uri());
        assert_eq!(request.uri().path(), path);
        let bytes = request.into_body().collect_bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (body, respond)
    }

    pub async fn answer(&mut self, method: &str, path: &str, reply: Value) -> Value {
        let (body, respond) = self.expect(method, path).await;
        respond.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).expect("JSON")))
                .expect("response"),
        );
        body
    }

    /// Answers with what was sent (as a create does).
    pub async fn echo(&mut self, method: &str, path: &str) -> Value {
        let (body, respond) = self.expect(method, path).await;
        respond.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
                .expect("response"),
        );
        body
    }

    /// Answers with an API error (a `Status` object with `code`).
    pub async fn fail(&mut self, method: &str, path: &str, code: u16) -> Value {
        let (body, respond) = self.expect(method, path).await;
        let status = serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": "the API server is unwell", "reason": "InternalError", "code": code});
        respond.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&status).expect("JSON")))
                .expect("response"),
        );
        body
    }

    /// Nothing more is asked of the API server.
    pub async fn done(mut self) {
        let next = tokio::time::timeout(Duration::from_millis(300), self.0.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

/// The reconcile's result; a reconcile that waits on a request nobody answers fails here
/// instead of hanging the suite.
pub async fn finish<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the reconcile made a request the test did not expect")
        .expect("the reconcile panicked")
}

/// The condition of type `kind` in a status (JSON null when there is none).
pub fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}
