//! Real frameworks: a small Django site and a Flask app answer their pages, a form POST
//! with a CSRF token and a multipart upload, compared with the same apps under
//! `wsgiref.simple_server` (status and body byte for byte; Django's per-response CSRF
//! tokens are masked before comparing).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use testkit::HttpResponse;
use wsgi_host::{AppSpec, HostOptions, RequestBody, WsgiHost};

use crate::support::{apps_dir, head, python, send};

struct Reference {
    _peer: testkit::Peer,
    addr: SocketAddr,
}

fn reference(args: &[&str], dir: &std::path::Path) -> Reference {
    let port = testkit::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(apps_dir().join("serve_wsgiref.py"))
        .arg(port.to_string())
        .args(args)
        .current_dir(dir);
    let log = std::env::temp_dir().join(format!("wsgiref-{port}.log"));
    let mut peer = testkit::Peer::spawn("wsgiref", cmd, Some(&log));
    peer.wait_tcp(addr, Duration::from_secs(20));
    Reference { _peer: peer, addr }
}

/// One request, sent to both servers.
struct Both<'a> {
    host: &'a WsgiHost,
    reference: &'a Reference,
}

#[derive(Debug)]
struct Pair {
    ours: (u16, Vec<(String, String)>, Vec<u8>),
    theirs: HttpResponse,
}

impl Pair {
    fn header(&self, name: &str) -> (Option<String>, Option<String>) {
        let ours = self
            .ours
            .1
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone());
        (ours, self.theirs.header(name).map(str::to_owned))
    }

    /// Same status and body (after `mask`).
    fn assert_same(&self, what: &str, mask: impl Fn(&[u8]) -> Vec<u8>) {
        assert_eq!(self.ours.0, self.theirs.status, "{what}: status");
        let (a, b) = (mask(&self.ours.2), mask(&self.theirs.body));
        assert!(
            a == b,
            "{what}: bodies differ\nours:   {}\ntheirs: {}",
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b)
        );
        let (ct_ours, ct_theirs) = self.header("content-type");
        assert_eq!(ct_ours, ct_theirs, "{what}: Content-Type");
    }
}

impl Both<'_> {
    async fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Pair {
        let mut all: Vec<(&str, String)> =
            headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        if !body.is_empty() {
            all.push(("Content-Length", body.len().to_string()));
        }
        let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let ours = send(
            self.host,
            &head(method, target, &refs),
            if body.is_empty() {
                RequestBody::Empty
            } else {
                RequestBody::Full(Bytes::copy_from_slice(body))
            },
        )
        .await;
        let mut raw =
            format!("{method} {target} HTTP/1.1\r\nHost: testserver\r\nConnection: close\r\n")
                .into_bytes();
        for (k, v) in &refs {
            raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(body);
        let addr = self.reference.addr;
        let theirs = tokio::task::spawn_blocking(move || {
            HttpResponse::parse(&testkit::raw_exchange(addr, &raw, Duration::from_secs(20)))
        })
        .await
        .unwrap();
        let headers = ours
            .head
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        Pair {
            ours: (ours.head.status, headers, ours.body),
            theirs,
        }
    }
}

fn same(b: &[u8]) -> Vec<u8> {
    b.to_vec()
}

const TOKEN_ATTR: &str = "name=\"csrfmiddlewaretoken\" value=\"";

/// The form's CSRF token in a page.
fn form_token(page: &[u8]) -> String {
    let text = String::from_utf8_lossy(page);
    let at = text.find(TOKEN_ATTR).expect("a CSRF field") + TOKEN_ATTR.len();
    text[at..at + text[at..].find('"').unwrap()].to_owned()
}

/// The page with its (per-response, random) CSRF token masked.
fn mask_token(page: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(page).into_owned();
    match text.find(TOKEN_ATTR) {
        Some(at) => {
            let start = at + TOKEN_ATTR.len();
            let end = start + text[start..].find('"').unwrap();
            format!("{}TOKEN{}", &text[..start], &text[end..]).into_bytes()
        }
        None => page.to_vec(),
    }
}

fn cookie(set_cookie: Option<String>) -> String {
    set_cookie
        .expect("a Set-Cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn multipart(fields: &[(&str, &[u8])], file: (&str, &str, &[u8])) -> (String, Vec<u8>) {
    let boundary = "----gatewayBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    let (name, filename, data) = file;
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_site_as_under_wsgiref() {
    let site = apps_dir().join("djsite");
    let host = WsgiHost::start(
        &AppSpec::module("mysite.wsgi").pythonpath(&site),
        HostOptions {
            threads: 2,
            ..HostOptions::default()
        },
    )
    .expect("Django loads (installed by the test command)");
    let reference = reference(&["module", "mysite.wsgi"], &site);
    let both = Both {
        host: &host,
        reference: &reference,
    };

    both.request("GET", "/", &[], b"")
        .await
        .assert_same("index", same);
    both.request("GET", "/items/", &[], b"")
        .await
        .assert_same("list page", same);
    both.request("GET", "/nope/", &[], b"")
        .await
        .assert_same("404", same);

    // The form: each server gives its own CSRF cookie and token.
    let form = both.request("GET", "/items/new/", &[], b"").await;
    form.assert_same("form page", mask_token);
    let (ours_cookie, theirs_cookie) = form.header("set-cookie");
    let (ours_cookie, theirs_cookie) = (cookie(ours_cookie), cookie(theirs_cookie));
    let (ours_token, theirs_token) = (form_token(&form.ours.2), form_token(&form.theirs.body));

    let post = |token: &str, body: &str| format!("csrfmiddlewaretoken={token}&{body}");
    let form_type = ("Content-Type", "application/x-www-form-urlencoded");
    // Invalid: errors shown, on both.
    let ours = send(
        &host,
        &head(
            "POST",
            "/items/new/",
            &[
                form_type,
                ("Cookie", &ours_cookie),
                (
                    "Content-Length",
                    &post(&ours_token, "name=widget&quantity=0")
                        .len()
                        .to_string(),
                ),
            ],
        ),
        RequestBody::Full(
            post(&ours_token, "name=widget&quantity=0")
                .into_bytes()
                .into(),
        ),
    )
    .await;
    assert_eq!(ours.head.status, 200);
    assert!(
        ours.text()
            .contains("Ensure this value is greater than or equal to 1"),
        "{}",
        ours.text()
    );
    // Valid: a redirect to the list, which now shows the new item, on both.
    for (token, cookie_value, is_ours) in [
        (&ours_token, &ours_cookie, true),
        (&theirs_token, &theirs_cookie, false),
    ] {
        let body = post(token, "name=widget&quantity=3");
        let len = body.len().to_string();
        let headers = [
            form_type,
            ("Cookie", cookie_value.as_str()),
            ("Content-Length", len.as_str()),
        ];
        if is_ours {
            let r = send(
                &host,
                &head("POST", "/items/new/", &headers),
                RequestBody::Full(body.into_bytes().into()),
            )
            .await;
            assert_eq!(r.head.status, 302, "{}", r.text());
            assert_eq!(r.head.header("location"), Some(&b"/items/"[..]));
        } else {
            let mut raw =
                b"POST /items/new/ HTTP/1.1\r\nHost: testserver\r\nConnection: close\r\n".to_vec();
            for (k, v) in headers {
                raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            raw.extend_from_slice(body.as_bytes());
            let addr = reference.addr;
            let r = tokio::task::spawn_blocking(move || {
                HttpResponse::parse(&testkit::raw_exchange(addr, &raw, Duration::from_secs(20)))
            })
            .await
            .unwrap();
            assert_eq!(r.status, 302);
        }
    }
    both.request("GET", "/items/", &[], b"")
        .await
        .assert_same("list after the POST", same);
    // Without the token: 403 from both.
    both.request("POST", "/items/new/", &[form_type], b"name=x&quantity=1")
        .await
        .assert_same("POST without CSRF", |b| b.to_vec());

    // A multipart upload with binary content.
    let data: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    for (token, cookie_value, is_ours) in [
        (&ours_token, &ours_cookie, true),
        (&theirs_token, &theirs_cookie, false),
    ] {
        let (ctype, body) = multipart(
            &[
                ("csrfmiddlewaretoken", token.as_bytes()),
                ("note", b"hello"),
            ],
            ("doc", "data.bin", &data),
        );
        let len = body.len().to_string();
        let headers = [
            ("Content-Type", ctype.as_str()),
            ("Cookie", cookie_value.as_str()),
            ("Content-Length", len.as_str()),
        ];
        let text = if is_ours {
            send(
                &host,
                &head("POST", "/upload/", &headers),
                RequestBody::Full(body.into()),
            )
            .await
            .text()
        } else {
            let mut raw =
                b"POST /upload/ HTTP/1.1\r\nHost: testserver\r\nConnection: close\r\n".to_vec();
            for (k, v) in headers {
                raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            raw.extend_from_slice(&body);
            let addr = reference.addr;
            tokio::task::spawn_blocking(move || {
                HttpResponse::parse(&testkit::raw_exchange(addr, &raw, Duration::from_secs(20)))
                    .text()
            })
            .await
            .unwrap()
        };
        assert!(text.starts_with("data.bin 200000 "), "{text}");
        assert!(text.ends_with(" hello\n"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_app_as_under_wsgiref() {
    let file = apps_dir().join("flaskapp/run.py");
    let host = WsgiHost::start(
        &AppSpec::wsgi_file(&file).callable("app"),
        HostOptions::default(),
    )
    .expect("Flask loads (installed by the test command)");
    let dir = apps_dir().join("flaskapp");
    let reference = reference(&["wsgi-file", file.to_str().unwrap(), "app"], &dir);
    let both = Both {
        host: &host,
        reference: &reference,
    };
    both.request("GET", "/?a=1&b=%C3%A9", &[], b"")
        .await
        .assert_same("index", same);
    both.request("GET", "/missing-on-purpose", &[], b"")
        .await
        .assert_same("404", same);
    both.request("GET", "/not-routed", &[], b"")
        .await
        .assert_same("router 404", same);
    both.request(
        "POST",
        "/form",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=caf%C3%A9&quantity=2",
    )
    .await
    .assert_same("form", same);
    let data: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
    let (ctype, body) = multipart(&[("note", b"x")], ("doc", "up.bin", &data));
    both.request("POST", "/upload", &[("Content-Type", &ctype)], &body)
        .await
        .assert_same("upload", same);
}
