//! The registry API handler: parses a request, asks the mirror, writes the answer.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::TryStreamExt;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

use super::byteranges;
use super::caller::Caller;
use super::route::{self, Route};
use crate::error::Error;
use crate::oci::accept::AcceptClass;
use crate::oci::digest::Digest;
use crate::oci::range::RangeSet;
use crate::registry::blobs::BlobAnswer;
use crate::registry::referrers::ReferrersAnswer;
use crate::registry::{Mirror, Via, Want};
use crate::store::ServedBy;

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// The referrers filters upstream applied (the distribution spec says a registry MUST send it
/// when it filtered).
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// The `ns` query parameter: which registry a containerd request is for.
pub(crate) fn ns_of(uri: &Uri) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "ns").map(|(_, v)| v.into_owned())
}

pub(crate) async fn handle(
    State(mirror): State<Arc<Mirror>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    match dispatch(&mirror, caller, &method, &uri, &headers).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    mirror: &Mirror,
    caller: Caller,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, Error> {
    let mut route = route::parse(uri.path())?;
    let want = match *method {
        Method::GET => Want::Content,
        Method::HEAD => Want::Head,
        _ => {
            return Err(Error::Unsupported(format!(
                "{method} is not supported: this registry is a read-only mirror"
            )))
        }
    };
    if route == Route::Upload {
        return Err(Error::Unsupported(
            "uploads are not supported: this registry is a read-only mirror".into(),
        ));
    }
    let (ns, prefix) = registry_of(mirror, uri, &mut route);
    let routing = Routing { ns: ns.as_deref(), prefix: prefix.as_deref() };
    let via = if caller.is_peer() { Via::Peer } else { Via::Client };
    if let Some(peers) = mirror.peers().filter(|_| via == Via::Peer) {
        peers.served_one();
    }
    let answer = answer(mirror, route, routing, via, uri, headers, want).await;
    match prefix {
        // The request log names the registry the prefix chose, for errors too.
        Some(host) => {
            let mut resp = answer.unwrap_or_else(IntoResponse::into_response);
            resp.extensions_mut().insert(RoutedTo(host));
            Ok(resp)
        }
        None => answer,
    }
}

/// The registry a path prefix chose, for the request log.
#[derive(Clone)]
pub(crate) struct RoutedTo(pub(crate) String);

/// The answer to a read of `route` from the registry `routing` names.
async fn answer(
    mirror: &Mirror,
    route: Route,
    routing: Routing<'_>,
    via: Via,
    uri: &Uri,
    headers: &HeaderMap,
    want: Want,
) -> Result<Response, Error> {
    let ns = routing.ns;
    match route {
        Route::Base => {
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response())
        }
        Route::Manifest { name, reference } => {
            let accept = AcceptClass::from_headers(headers);
            let m = mirror.manifest(ns, &name, &reference, &accept, want, via).await?;
            let mut resp = match m.bytes.filter(|_| want == Want::Content) {
                Some(bytes) => Response::new(Body::from(bytes)),
                None => Response::new(Body::empty()),
            };
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, value(&m.media_type)?);
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(m.len));
            content_headers(h, &m.digest);
            Ok(tagged(resp, m.served_by))
        }
        Route::Blob { name, digest } => {
            // A HEAD ignores Range (RFC 9110): the same answer on a hit and a miss.
            let range = headers
                .get(header::RANGE)
                .filter(|_| want == Want::Content)
                .and_then(|v| v.to_str().ok())
                .and_then(RangeSet::parse);
            let b = mirror.blob(ns, &name, &digest, range, want, via).await?;
            blob_response(b, &digest)
        }
        Route::Tags { name } => {
            let path = format!("/v2/{name}/tags/list");
            passthrough(mirror, routing, &name, &path, uri, headers, want).await
        }
        Route::Referrers { name, digest } => {
            let path = with_query(&format!("/v2/{name}/referrers/{digest}"), &query_without_ns(uri));
            let key = referrers_key(uri);
            let accept = headers.get(header::ACCEPT);
            let r = mirror.referrers(ns, &name, &digest, &path, key.as_deref(), accept).await?;
            referrers_response(r, routing, want)
        }
        Route::Upload => unreachable!("handled above"),
    }
}

/// A blob answer: the whole blob (200), one range (206 with `Content-Range`), or several
/// (206 `multipart/byteranges`).
fn blob_response(b: BlobAnswer, digest: &Digest) -> Result<Response, Error> {
    const OCTETS: &str = "application/octet-stream";
    let BlobAnswer { len, spans, mut bodies, served_by } = b;
    let (status, content_type, content_length, body) = match spans.as_slice() {
        [] => (StatusCode::OK, OCTETS.to_owned(), len, bodies.pop()),
        [(start, end)] => (StatusCode::PARTIAL_CONTENT, OCTETS.to_owned(), end - start, bodies.pop()),
        many => {
            let m = byteranges::multipart(len, many, bodies, OCTETS);
            let mut resp = Response::new(m.body);
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, value(&m.content_type)?);
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(m.content_length));
            content_headers(h, digest);
            return Ok(tagged(resp, served_by));
        }
    };
    let mut resp = Response::new(body.map_or_else(Body::empty, Body::from_stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, value(&content_type)?);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(content_length));
    content_headers(h, digest);
    if let [(start, end)] = spans.as_slice() {
        h.insert(header::CONTENT_RANGE, value(&format!("bytes {start}-{}/{len}", end - 1))?);
    }
    Ok(tagged(resp, served_by))
}

/// The registry a request is for: its `ns`; else a first path component naming a configured
/// registry (`/v2/ghcr.io/org/app/...`, taken off the route's name and returned as the
/// prefix); else the default registry (`None`).
fn registry_of(mirror: &Mirror, uri: &Uri, route: &mut Route) -> (Option<String>, Option<String>) {
    if let Some(ns) = ns_of(uri) {
        return (Some(ns), None);
    }
    let Some(name) = route.name_mut() else { return (None, None) };
    let Some(host) = mirror.registry_prefix(name).map(str::to_owned) else { return (None, None) };
    if let Some(rest) = route::strip_host(name, &host) {
        *name = rest.into_owned();
    }
    (Some(host.clone()), Some(host))
}

/// How a request named its registry: by `ns`, or by a path prefix (then `ns` is the prefix).
#[derive(Clone, Copy)]
struct Routing<'a> {
    ns: Option<&'a str>,
    prefix: Option<&'a str>,
}

/// The request's query without `ns`, as upstream is asked it.
fn query_without_ns(uri: &Uri) -> String {
    let pairs = uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().filter(|(k, _)| k != "ns"));
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs.into_iter().flatten()).finish()
}

/// The key part of a referrers query: `artifactType` (and `n`, `last`), in one order. A query
/// with any other parameter (a page cursor of upstream's own, say) is asked of upstream as it
/// is and not kept (None): the answer depends on what berth does not understand, and an
/// unknown parameter cannot make another kept answer.
fn referrers_key(uri: &Uri) -> Option<String> {
    let mut pairs: Vec<(String, String)> = uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().filter(|(k, _)| k != "ns").collect())
        .unwrap_or_default();
    if !pairs.iter().all(|(k, _)| matches!(k.as_str(), "artifactType" | "n" | "last")) {
        return None;
    }
    pairs.sort();
    if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish())
}

/// `path?query`, or `path` alone for an empty query.
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// A referrers answer, kept or fresh: upstream's headers that matter (type, filters, the
/// next page on the client's route).
fn referrers_response(r: ReferrersAnswer, routing: Routing<'_>, want: Want) -> Result<Response, Error> {
    let len = r.body.len();
    let mut resp = match want {
        Want::Content => Response::new(Body::from(r.body)),
        Want::Head => Response::new(Body::empty()),
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, value(&r.media_type)?);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(f) = r.filters_applied.as_deref().and_then(|f| HeaderValue::from_str(f).ok()) {
        h.insert(OCI_FILTERS_APPLIED, f);
    }
    if let Some(link) = r.link.and_then(|(l, page)| next_link(&l, &page, routing)) {
        h.insert(header::LINK, value(&link)?);
    }
    Ok(tagged(resp, r.served_by))
}

/// tags/list: upstream's answer as it is, asked at `path`, minus `ns` in the query; a
/// next-page link stays on the route the client took.
async fn passthrough(
    mirror: &Mirror,
    routing: Routing<'_>,
    name: &str,
    path: &str,
    uri: &Uri,
    headers: &HeaderMap,
    want: Want,
) -> Result<Response, Error> {
    let upstream = &mirror.upstream(routing.ns)?;
    let path = with_query(path, &query_without_ns(uri));
    let up = upstream.passthrough(&path, name, headers.get(header::ACCEPT)).await?;
    let mut resp = Response::builder().status(up.status().as_u16());
    for h in [header::CONTENT_TYPE, header::CONTENT_LENGTH, OCI_FILTERS_APPLIED] {
        if let Some(v) = up.headers().get(&h) {
            resp = resp.header(h, v.clone());
        }
    }
    // The next page stays with this registry: the link is made relative to berth, keeping ns.
    if let Some(link) = up.headers().get(header::LINK).and_then(|v| v.to_str().ok()) {
        if let Some(v) = next_link(link, up.url(), routing).and_then(|l| HeaderValue::from_str(&l).ok()) {
            resp = resp.header(header::LINK, v);
        }
    }
    let body = if want == Want::Head {
        Body::empty()
    } else {
        Body::from_stream(up.bytes_stream().map_err(std::io::Error::other))
    };
    let resp = resp.body(body).map_err(Error::internal)?;
    Ok(tagged(resp, ServedBy::Upstream))
}

/// Upstream's `Link: <URL>; rel="next"` for the next page, as a link to berth: the path and
/// query of URL (resolved against the page it came with), with the client's route put back:
/// its path prefix, or its `ns`. A link that leaves `/v2/`, or is not `rel="next"`, is dropped.
fn next_link(link: &str, page: &url::Url, routing: Routing<'_>) -> Option<String> {
    // Only the relation is passed on: upstream's other parameters are its own.
    let is_next = |params: &str| {
        params.split(';').any(|p| p.trim().eq_ignore_ascii_case(r#"rel="next""#) || p.trim() == "rel=next")
    };
    let target = link_values(link).into_iter().find(|(_, params)| is_next(params))?.0;
    let target = page.join(target).ok()?;
    let rest = target.path().strip_prefix("/v2/")?;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(target.query_pairs().filter(|(k, _)| k != "ns"));
    let path = match (routing.prefix, routing.ns) {
        (Some(prefix), _) => format!("/v2/{prefix}/{rest}"),
        (None, ns) => {
            if let Some(ns) = ns {
                query.append_pair("ns", ns);
            }
            format!("/v2/{rest}")
        }
    };
    let query = query.finish();
    let sep = if query.is_empty() { "" } else { "?" };
    Some(format!(r#"<{path}{sep}{query}>; rel="next""#))
}

/// The link-values of a `Link` header (`<a>; rel="prev", <b>; rel="next"`): each target and
/// its parameters.
fn link_values(link: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = link.trim();
    while let Some((target, after)) = rest.strip_prefix('<').and_then(|r| r.split_once('>')) {
        let (params, next) = after.find('<').map_or((after, ""), |i| after.split_at(i));
        out.push((target, params.trim().trim_end_matches(',')));
        rest = next;
    }
    out
}

fn content_headers(h: &mut HeaderMap, digest: &Digest) {
    let d = HeaderValue::from_str(digest.as_str()).expect("digests are header-safe");
    h.insert(header::ETAG, HeaderValue::from_str(&format!("\"{digest}\"")).expect("digests are header-safe"));
    h.insert(DOCKER_CONTENT_DIGEST, d);
}

fn value(s: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(s).map_err(|_| Error::Internal(format!("{s:?} is not a valid header value")))
}

fn tagged(mut resp: Response, served_by: ServedBy) -> Response {
    resp.extensions_mut().insert(served_by);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_page_links_keep_the_registry() {
        let page = url::Url::parse("https://ghcr.io/v2/org/app/tags/list?n=2").unwrap();
        let link = r#"</v2/org/app/tags/list?n=2&last=b>; rel="next""#;
        let by_ns = Routing { ns: Some("ghcr.io"), prefix: None };
        let by_prefix = Routing { ns: Some("ghcr.io"), prefix: Some("ghcr.io") };
        let default = Routing { ns: None, prefix: None };
        assert_eq!(
            next_link(link, &page, by_ns).unwrap(),
            r#"</v2/org/app/tags/list?n=2&last=b&ns=ghcr.io>; rel="next""#
        );
        assert_eq!(
            next_link(link, &page, by_prefix).unwrap(),
            r#"</v2/ghcr.io/org/app/tags/list?n=2&last=b>; rel="next""#
        );
        let absolute = r#"<https://ghcr.io/v2/org/app/tags/list?last=b&ns=evil>; rel="next""#;
        assert_eq!(
            next_link(absolute, &page, default).unwrap(),
            r#"</v2/org/app/tags/list?last=b>; rel="next""#
        );
        assert_eq!(
            next_link(absolute, &page, by_prefix).unwrap(),
            r#"</v2/ghcr.io/org/app/tags/list?last=b>; rel="next""#
        );
        assert_eq!(next_link(r#"<https://elsewhere/steal>; rel="next""#, &page, default), None);
        assert_eq!(next_link(r#"<https://elsewhere/v2x/steal>; rel="next""#, &page, by_prefix), None);
        assert_eq!(next_link("garbage", &page, default), None);
        assert_eq!(next_link(r#"</v2/org/app/tags/list?last=b>; rel="prev""#, &page, default), None);
        let odd = r#"</v2/org/app/tags/list?last=b>; title="x"; rel="next"; y=z"#;
        assert_eq!(next_link(odd, &page, default).unwrap(), r#"</v2/org/app/tags/list?last=b>; rel="next""#);
        let both =
            r#"</v2/org/app/tags/list?last=a>; rel="prev", </v2/org/app/tags/list?last=c>; rel="next""#;
        assert_eq!(next_link(both, &page, default).unwrap(), r#"</v2/org/app/tags/list?last=c>; rel="next""#);
    }
}
