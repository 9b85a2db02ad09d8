//! The dashboard: one web page of the node, served on a listener of its own
//! (`dashboard` in `[supervisor]`), with nothing fetched from elsewhere: its HTML, script
//! and style are in the binary. The page reads the control API (`GET /models`, `GET
//! /metrics`) every two seconds on the same listener; its actions (start, stop, restart,
//! hibernate, wake, a quota) and a model's output need the dashboard's token
//! (`dashboard_token`, sent as `Authorization: Bearer TOKEN`), and without one configured
//! the dashboard is read-only. A token in a header, not a cookie: another site's page
//! cannot act through a visitor's browser.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The page's files, by path: (content type, body).
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", PAGE)),
        "/app.js" => Some(("text/javascript; charset=utf-8", SCRIPT)),
        "/style.css" => Some(("text/css; charset=utf-8", STYLE)),
        _ => None,
    }
}

/// One of the page's files, with headers that keep it to itself: no script, style or
/// connection but its own origin's, never in a frame, its type as said.
pub fn page<E>(
    content_type: &'static str,
    body: &'static str,
) -> Response<http_body_util::combinators::BoxBody<Bytes, E>> {
    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
               img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header("content-security-policy", csp)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header(hyper::header::CACHE_CONTROL, "no-cache")
        .body(http_body_util::BodyExt::boxed(
            http_body_util::BodyExt::map_err(Full::new(Bytes::from_static(body.as_bytes())), |e| {
                match e {}
            }),
        ))
        .expect("a valid response")
}

/// Whether the dashboard's listener serves `request` (besides its page): the control API's
/// reads to anyone; actions and a model's output to who carries `token`. Else the status
/// and why.
pub fn allowed(request: &Request<Incoming>, token: Option<&str>) -> Result<(), (u16, String)> {
    let path = request.uri().path();
    let read = request.method() == Method::GET
        && (matches!(path, "/models" | "/metrics" | "/healthz")
            || path
                .strip_prefix("/models/")
                .is_some_and(|name| !name.is_empty() && !name.contains('/')));
    if read {
        return Ok(());
    }
    let known = path.starts_with("/models/") || path == "/reload";
    if !known {
        return Err((404, "not found\n".into()));
    }
    match token {
        None => Err((
            403,
            "the dashboard is read-only: set dashboard_token in [supervisor] for its actions \
             and the models' output\n"
                .into(),
        )),
        Some(token) => {
            let given = super::server::bearer(request.headers());
            match super::server::same_secret(given.as_bytes(), token.as_bytes()) {
                true => Ok(()),
                false => Err((
                    401,
                    "the dashboard's token is needed: Authorization: Bearer TOKEN\n".into(),
                )),
            }
        }
    }
}
