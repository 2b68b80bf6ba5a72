//! A browser in miniature for the demo tests.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use axum::body::Body;
use hipflask_demo::DemoApp;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn set_cookie(&self) -> Option<&str> {
        self.headers.get("set-cookie").map(|v| v.to_str().unwrap())
    }
    pub(crate) fn vary(&self) -> Option<&str> {
        self.headers.get("vary").map(|v| v.to_str().unwrap())
    }
}

/// A browser in miniature: keeps the session cookie between requests.
pub(crate) struct Client {
    pub(crate) app: DemoApp,
    pub(crate) cookie: Option<String>,
}

impl Client {
    pub(crate) fn new(app: DemoApp) -> Client {
        Client { app, cookie: None }
    }

    pub(crate) async fn send(&mut self, method: Method, path: &str, content_type: Option<&str>, body: &str) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("session={c}"));
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = self.app.clone().oneshot(req.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        if let Some(set) = headers.get("set-cookie") {
            let set = set.to_str().unwrap();
            let value = &set["session=".len()..set.find(';').unwrap_or(set.len())];
            self.cookie = (!value.is_empty()).then(|| value.to_owned());
        }
        Answer { status, headers, body }
    }

    pub(crate) async fn get(&mut self, path: &str) -> Answer {
        self.send(Method::GET, path, None, "").await
    }

    pub(crate) async fn form(&mut self, path: &str, body: &str) -> Answer {
        self.send(Method::POST, path, Some("application/x-www-form-urlencoded"), body).await
    }

    pub(crate) async fn json(&mut self, method: Method, path: &str, body: &str) -> Answer {
        self.send(method, path, Some("application/json"), body).await
    }
}
