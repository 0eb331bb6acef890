//! The web client: static files compiled into the binary, so the gateway serves a working
//! client with no build step and nothing to install beside it. `/` is the call page,
//! `/watch` the receive-only page of a broadcast.
//!
//! The files go gzipped to browsers that accept it, and with an entity tag, so that a
//! page opened again is revalidated rather than fetched again: the viewer on a hotel's
//! 300 kbit/s link waited about 1.5 s for the call page's 57 kB, a quarter of that
//! gzipped, and nothing once cached.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha1::{Digest, Sha1};
use std::io::Write;
use std::sync::OnceLock;

/// The client's files: path, content type, body.
const ASSETS: [(&str, &str, &str); 8] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app.js"),
    ),
    (
        "/watch",
        "text/html; charset=utf-8",
        include_str!("../web/watch.html"),
    ),
    (
        "/watch.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/watch.js"),
    ),
    (
        "/sdp.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/sdp.js"),
    ),
    (
        "/regions.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/regions.js"),
    ),
    (
        "/vendor/hls.light.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/vendor/hls.light.min.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../web/style.css"),
    ),
];

/// Everything the page may load comes from the gateway itself; media arrives over
/// WebRTC, which the policy does not govern.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; media-src 'self' blob:; connect-src 'self' ws: wss:; \
frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The paths the client's files are served at.
pub fn paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(path, _, _)| *path)
}

/// One file as served: its entity tags and its gzipped bytes, made once.
struct Prepared {
    etag: HeaderValue,
    gzip_etag: HeaderValue,
    gzip: Bytes,
}

fn prepared() -> &'static [Prepared] {
    static PREPARED: OnceLock<Vec<Prepared>> = OnceLock::new();
    PREPARED.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(_, _, body)| {
                let digest = Sha1::digest(body.as_bytes());
                let tag: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                // Writing to a Vec cannot fail.
                let gzip = match encoder.write_all(body.as_bytes()) {
                    Ok(()) => encoder.finish().unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                Prepared {
                    etag: HeaderValue::from_str(&format!("\"{tag}\""))
                        .unwrap_or(HeaderValue::from_static("\"\"")),
                    gzip_etag: HeaderValue::from_str(&format!("\"{tag}-gzip\""))
                        .unwrap_or(HeaderValue::from_static("\"\"")),
                    gzip: Bytes::from(gzip),
                }
            })
            .collect()
    })
}

/// Serves one of the client's files to a request with `request` headers.
pub fn asset(path: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|(p, _, _)| *p == path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (_, content_type, body) = ASSETS[index];
    let prepared = &prepared()[index];
    let gzip = !prepared.gzip.is_empty() && accepts_gzip(request);
    let etag = if gzip {
        &prepared.gzip_etag
    } else {
        &prepared.etag
    };
    let not_modified = none_match(request, etag);
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if gzip {
        let mut response = prepared.gzip.clone().into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        response
    } else {
        body.into_response()
    };
    let headers = response.headers_mut();
    if !not_modified {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Whether the request's `Accept-Encoding` takes gzip (by name or `*`, with a weight above
/// zero; RFC 9110 12.5.3).
fn accepts_gzip(request: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in request.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let weight = parts
                .filter_map(|p| {
                    let (name, value) = p.split_once('=')?;
                    name.trim().eq_ignore_ascii_case("q").then_some(value)
                })
                .next_back()
                .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(weight > 0.0);
            } else if coding == "*" {
                any = Some(weight > 0.0);
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// Whether the request's `If-None-Match` names `etag` (or is `*`): the browser's copy is
/// current (RFC 9110 13.1.2, weak comparison).
fn none_match(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let etag = etag.as_bytes();
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").as_bytes() == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                name.clone(),
                HeaderValue::from_str(value).expect("a header value"),
            );
        }
        map
    }

    async fn body(response: Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body")
            .to_vec()
    }

    #[tokio::test]
    async fn every_file_goes_gzipped_to_a_browser_that_takes_it_and_plain_to_one_that_does_not() {
        for (path, content_type, text) in ASSETS {
            let plain = asset(path, &HeaderMap::new());
            assert_eq!(plain.status(), StatusCode::OK);
            assert_eq!(plain.headers().get(header::CONTENT_ENCODING), None);
            assert_eq!(plain.headers()[header::CONTENT_TYPE], content_type);
            assert_eq!(body(plain).await, text.as_bytes(), "{path}");

            let chromium = headers(&[(header::ACCEPT_ENCODING, "gzip, deflate, br, zstd")]);
            let zipped = asset(path, &chromium);
            assert_eq!(zipped.headers()[header::CONTENT_ENCODING], "gzip");
            assert_eq!(zipped.headers()[header::VARY], "Accept-Encoding");
            assert!(
                zipped
                    .headers()
                    .contains_key(header::CONTENT_SECURITY_POLICY)
            );
            let bytes = body(zipped).await;
            let mut unzipped = String::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_string(&mut unzipped)
                .expect("gzip");
            assert_eq!(unzipped, text, "{path}");
            // Gzip takes a large file to under 40 % (watch.js: 34 %); a minified one
            // (hls.js) is already dense, and halved.
            let (part, whole) = if path.starts_with("/vendor/") {
                (1, 2)
            } else {
                (2, 5)
            };
            if text.len() > 10_000 {
                assert!(
                    bytes.len() * whole < text.len() * part,
                    "{path}: {} of {}",
                    bytes.len(),
                    text.len()
                );
            }
        }
    }

    #[test]
    fn gzip_refused_by_weight_or_not_named_is_not_sent() {
        for refusal in [
            "gzip;q=0",
            "gzip;Q=0",
            "identity",
            "br",
            "*;q=0",
            "gzip; q=0.0, br",
            "",
        ] {
            let response = asset("/app.js", &headers(&[(header::ACCEPT_ENCODING, refusal)]));
            assert_eq!(
                response.headers().get(header::CONTENT_ENCODING),
                None,
                "{refusal}"
            );
        }
        for taken in ["GZIP", "*", "br;q=1, gzip;q=0.5", "x-gzip"] {
            let response = asset("/app.js", &headers(&[(header::ACCEPT_ENCODING, taken)]));
            assert_eq!(
                response.headers()[header::CONTENT_ENCODING],
                "gzip",
                "{taken}"
            );
        }
    }

    #[tokio::test]
    async fn a_page_opened_again_is_revalidated_not_fetched_again() {
        let chromium = headers(&[(header::ACCEPT_ENCODING, "gzip")]);
        let first = asset("/app.js", &chromium);
        let etag = first.headers()[header::ETAG]
            .to_str()
            .expect("an etag")
            .to_owned();
        let again = headers(&[
            (header::ACCEPT_ENCODING, "gzip"),
            (header::IF_NONE_MATCH, &format!("\"other\", W/{etag}")),
        ]);
        let response = asset("/app.js", &again);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], etag.as_str());
        assert_eq!(response.headers().get(header::CONTENT_TYPE), None);
        assert!(body(response).await.is_empty());
        // The plain file is another representation, with a tag of its own.
        let plain_again = headers(&[(header::IF_NONE_MATCH, etag.as_str())]);
        assert_eq!(asset("/app.js", &plain_again).status(), StatusCode::OK);
        // Another file's tag does not match.
        let style = headers(&[
            (header::ACCEPT_ENCODING, "gzip"),
            (header::IF_NONE_MATCH, etag.as_str()),
        ]);
        assert_eq!(asset("/style.css", &style).status(), StatusCode::OK);
        assert_eq!(
            asset("/nothing", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
