//! The CGI script runner with real shell and Python scripts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgi_family::{CgiScript, Env, EnvBuilder, Flavor, RequestHead, ResponseKind, RunError};

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn env_for(body_len: usize) -> Env {
    let head = RequestHead::new("POST", "/cgi-bin/echo.sh/extra?a=b", "HTTP/1.1")
        .header("Host", "example.com")
        .header("Content-Type", "text/plain")
        .header("Content-Length", body_len.to_string())
        .header("Proxy", "http://evil.example/");
    EnvBuilder::new(Flavor::Cgi)
        .mount("/cgi-bin/echo.sh")
        .peer("127.0.0.1:4000".parse().unwrap())
        .local("127.0.0.1:80".parse().unwrap())
        .server_name("example.com")
        .build(&head)
        .unwrap()
}

async fn collect(mut out: cgi_family::CgiOutput) -> (cgi_family::CgiResponse, Vec<u8>) {
    let mut body = Vec::new();
    while let Some(c) = out.body.chunk().await.unwrap() {
        body.extend_from_slice(&c);
    }
    (out.response, body)
}

#[tokio::test]
async fn shell_script_gets_env_and_body() {
    let dir = testkit::temp_dir();
    let s = script(
        dir.path(),
        "echo.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\nX-Script: sh\\r\\n\\r\\n'\n\
         echo \"$REQUEST_METHOD $SCRIPT_NAME $PATH_INFO $QUERY_STRING $CONTENT_LENGTH proxy=${HTTP_PROXY:-none}\"\n\
         cat\n",
    );
    let body = b"line one\nline two\n".repeat(10_000);
    let out = CgiScript::new(&s)
        .run(&env_for(body.len()), std::io::Cursor::new(body.clone()))
        .await
        .unwrap();
    let (resp, got) = collect(out).await;
    assert_eq!((resp.status, resp.kind), (200, ResponseKind::Document));
    assert_eq!(resp.header("x-script"), Some(&b"sh"[..]));
    let first = format!(
        "POST /cgi-bin/echo.sh /extra a=b {} proxy=none\n",
        body.len()
    );
    assert_eq!(&got[..first.len()], first.as_bytes());
    assert_eq!(&got[first.len()..], &body[..]);
}

#[tokio::test]
async fn python_script_status_and_redirects() {
    let dir = testkit::temp_dir();
    let py = crate::support::python();
    let s = script(
        dir.path(),
        "status.py",
        &format!(
            "#!{}\nimport os, sys\nsys.stderr.write('to the log\\n' * 20000)\n\
             print('Status: 404 Not Found')\nprint('Content-Type: text/html')\nprint()\n\
             print('<p>%s</p>' % os.environ['REQUEST_URI'])\n",
            py.display()
        ),
    );
    let (resp, body) = collect(
        CgiScript::new(&s)
            .run(&env_for(0), tokio::io::empty())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((resp.status, &resp.reason[..]), (404, &b"Not Found"[..]));
    assert_eq!(body, b"<p>/cgi-bin/echo.sh/extra?a=b</p>\n");

    let r = script(
        dir.path(),
        "redir.sh",
        "#!/bin/sh\nprintf 'Location: /elsewhere\\n\\n'\n",
    );
    let (resp, _) = collect(
        CgiScript::new(&r)
            .run(&env_for(0), tokio::io::empty())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.kind, ResponseKind::LocalRedirect);
    let r = script(
        dir.path(),
        "redir2.sh",
        "#!/bin/sh\nprintf 'Location: https://example.org/\\n\\n'\n",
    );
    let (resp, _) = collect(
        CgiScript::new(&r)
            .run(&env_for(0), tokio::io::empty())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (resp.status, resp.kind),
        (302, ResponseKind::ClientRedirect)
    );
}

#[tokio::test]
async fn bad_scripts_give_typed_errors() {
    let dir = testkit::temp_dir();
    let silent = script(dir.path(), "silent.sh", "#!/bin/sh\nexit 3\n");
    match CgiScript::new(&silent)
        .run(&env_for(0), tokio::io::empty())
        .await
    {
        Err(RunError::NoHead { status }) => assert_eq!(status.code(), Some(3)),
        other => panic!("{other:?}"),
    }
    let garbage = script(
        dir.path(),
        "garbage.sh",
        "#!/bin/sh\nprintf 'not a header\\n\\nbody'\n",
    );
    assert!(matches!(
        CgiScript::new(&garbage)
            .run(&env_for(0), tokio::io::empty())
            .await,
        Err(RunError::BadHead(_))
    ));
    assert!(matches!(
        CgiScript::new(dir.path().join("missing.sh"))
            .run(&env_for(0), tokio::io::empty())
            .await,
        Err(RunError::Spawn { .. })
    ));
}

#[tokio::test]
async fn timeout_kills_the_script() {
    let dir = testkit::temp_dir();
    let slow = script(dir.path(), "slow.sh", "#!/bin/sh\nsleep 30\n");
    let start = Instant::now();
    let r = CgiScript::new(&slow)
        .timeout(Duration::from_millis(300))
        .run(&env_for(0), tokio::io::empty())
        .await;
    assert!(matches!(r, Err(RunError::Timeout { .. })), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(5));

    // A body that never ends is cut at the limit too.
    let drip = script(
        dir.path(),
        "drip.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nwhile true; do echo x; sleep 0.05; done\n",
    );
    let mut out = CgiScript::new(&drip)
        .timeout(Duration::from_millis(500))
        .run(&env_for(0), tokio::io::empty())
        .await
        .unwrap();
    let err = loop {
        match out.body.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the script never ends by itself"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, RunError::Timeout { .. }));
}

#[tokio::test]
async fn client_going_away_kills_the_script() {
    let dir = testkit::temp_dir();
    let s = script(
        dir.path(),
        "forever.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nstart\\n'\nexec sleep 30\n",
    );
    let out = CgiScript::new(&s)
        .run(&env_for(0), tokio::io::empty())
        .await
        .unwrap();
    let pid = out.body.pid().expect("running");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(out); // the client went away
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}/status")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .contains("State:\tZ")
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "script {pid} still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
