//! `routeid demo`: three session-keeping demo members behind the real proxy, on loopback, with
//! a guided tour that shows a first request, a sticky follow-up and a new session.
//!
//! Each demo member behaves like a Tomcat with `jvmRoute` set: it answers with its route, and
//! when the request carries no session of its own it creates one, `JSESSIONID=<random>.<route>`.

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::core::config::PoolConfig;
use crate::core::sticky::cookie_value;

/// Routes of the demo members, named like StatefulSet pods.
pub const DEMO_ROUTES: [&str; 3] = ["shop-0", "shop-1", "shop-2"];

fn new_session_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016X}", h.finish())
}

/// Serves one demo member on `listener` until the task is dropped.
pub async fn serve_demo_member(listener: TcpListener, route: &'static str) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc =
                service_fn(move |req: Request<Incoming>| async move { Ok::<_, Infallible>(demo_answer(route, &req)) });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn demo_answer(route: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let cookies = || req.headers().get_all(header::COOKIE).iter().map(|v| v.as_bytes());
    let session = cookie_value(cookies(), "JSESSIONID").and_then(|v| std::str::from_utf8(v).ok());
    // Like Tomcat: a session id whose route is another node's is re-issued under this node.
    let (session, new) = match session {
        Some(s) if s.rsplit_once('.').is_some_and(|(_, r)| r == route) => (s.to_owned(), false),
        _ => (format!("{}.{route}", new_session_id()), true),
    };
    let body = format!("served by {route}, session {session}{}\n", if new { " (new)" } else { "" });
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if new && let Ok(v) = HeaderValue::from_str(&format!("JSESSIONID={session}; Path=/; HttpOnly")) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// The demo pool file, for members at `addrs`.
pub fn demo_pool_yaml(addrs: &[SocketAddr]) -> String {
    let members: String =
        addrs.iter().zip(DEMO_ROUTES).map(|(a, r)| format!("      - {{address: \"{a}\", route: {r}}}\n")).collect();
    format!(
        "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: shop}}\nspec:\n  lbMethod: ByRequests\n  sticky:\n    names: [JSESSIONID, jsessionid]\n  backend:\n    members:\n{members}"
    )
}

/// Starts the three demo members on 127.0.0.1 ephemeral ports; returns the demo pool.
pub async fn start_members() -> std::io::Result<Vec<PoolConfig>> {
    let mut addrs = Vec::new();
    for route in DEMO_ROUTES {
        let l = TcpListener::bind(("127.0.0.1", 0)).await?;
        addrs.push(l.local_addr()?);
        tokio::spawn(serve_demo_member(l, route));
    }
    crate::standalone::parse_pools(&demo_pool_yaml(&addrs)).map_err(|e| std::io::Error::other(e.join("; ")))
}

/// One request of the tour: the member's answer and the session cookie it set, if any.
async fn tour_get(proxy: SocketAddr, cookie: Option<&str>) -> Result<(String, Option<String>), String> {
    let stream = tokio::net::TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder().uri("/").header(header::HOST, "demo.local");
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let set = resp
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_owned());
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((String::from_utf8_lossy(&body).trim_end().to_owned(), set))
}

/// Prints the curl commands and runs the same three requests; `Ok(())` when the follow-up stuck
/// to the first member and the new session went elsewhere.
pub async fn tour(proxy: SocketAddr) -> Result<(), String> {
    println!(
        "routeid demo: proxy on http://{proxy}/ in front of {} members ({})",
        DEMO_ROUTES.len(),
        DEMO_ROUTES.join(", ")
    );
    println!();
    println!("Try it yourself:");
    println!(
        "  curl -si -c /tmp/routeid.jar http://{proxy}/      # first visit: a member creates JSESSIONID=<id>.<route>"
    );
    println!(
        "  curl -s  -b /tmp/routeid.jar http://{proxy}/      # follow-up: sticks to the member named by the cookie"
    );
    println!(
        "  curl -s  http://{proxy}/                          # no cookie: a new session, balanced to the next member"
    );
    println!(
        "  curl -s  'http://{proxy}/;jsessionid=x.shop-2'    # the route in the URL (Apache jsessionid path parameter)"
    );
    println!();
    println!("What those commands show:");
    let (first, set) = tour_get(proxy, None).await?;
    println!("  1. first visit:  {first}");
    let set = set.ok_or("the first visit set no session cookie")?;
    println!("                   Set-Cookie: {set}");
    let (again, _) = tour_get(proxy, Some(&set)).await?;
    println!("  2. with cookie:  {again}");
    let (other, _) = tour_get(proxy, None).await?;
    println!("  3. new session:  {other}");
    let member = |s: &str| s.split(',').next().unwrap_or("").to_owned();
    if member(&first) != member(&again) {
        return Err(format!("the follow-up went to another member: {again:?} after {first:?}"));
    }
    if member(&first) == member(&other) {
        return Err("the new session went to the same member".into());
    }
    println!();
    println!("Sticky: request 2 reached the same member as request 1; request 3 was balanced to another.");
    Ok(())
}
