//! Which upstream response headers reach the client, and under what name.

use axum::http::{HeaderMap, HeaderName, header};

/// Hop-by-hop headers (RFC 9110 section 7.6.1) and headers the proxy sets itself.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-encoding",
    "content-type",
    "date",
    "server",
    "set-cookie",
    "alt-svc",
];

/// The upstream's own request id is returned as `x-upstream-request-id`; `x-request-id` is the
/// proxy's (the client's, if it sent one), which the upstream also receives.
pub const UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// End-to-end headers of an upstream response, ready to add to the client's response.
pub fn pass_back(upstream: &HeaderMap) -> HeaderMap {
    // Headers named in `Connection:` are hop-by-hop too.
    let named_by_connection: Vec<String> = upstream
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        let n = name.as_str();
        if DROPPED.contains(&n) || named_by_connection.iter().any(|c| c == n) {
            continue;
        }
        if n == "x-request-id" {
            out.append(UPSTREAM_REQUEST_ID, value.clone());
        } else {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn drops_hop_by_hop_and_renames_request_id() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-request-id", HeaderValue::from_static("req_up"));
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("99"),
        );
        h.insert("openai-processing-ms", HeaderValue::from_static("12"));
        let out = pass_back(&h);
        assert!(out.get("connection").is_none());
        assert!(out.get("keep-alive").is_none());
        assert!(out.get("x-secret-hop").is_none());
        assert!(out.get("transfer-encoding").is_none());
        assert!(out.get("x-request-id").is_none());
        assert_eq!(out["x-upstream-request-id"], "req_up");
        assert_eq!(out["x-ratelimit-remaining-requests"], "99");
        assert_eq!(out["openai-processing-ms"], "12");
    }
}
